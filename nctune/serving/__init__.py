"""Using a finished run's model: ``inference`` (load, predict, evaluate) and ``export``
(ONNX / TorchScript, verified by running the exported file)."""
