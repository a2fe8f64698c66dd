"""Predict with a fine-tuned model: images in, labels and probabilities out.

:func:`load_finetuned` rebuilds a run's model (see :func:`nctune.runs.artifacts.load_finetuned`)
and binds :func:`predict` to it, so production code needs two lines::

    model = nctune.load_finetuned("runs/my-run/finetune")
    preds = model.predict(["a.jpg", "b.png"], batch_size=64)
    preds.labels, preds.probabilities

Inputs go through ``model.transform``, the deterministic eval transform the run used for
its validation and test images (:func:`nctune.data.eval_transform` on the saved input
config) after the same decoding (:func:`nctune.data.open_image`), so predicting on a run's
test files reproduces its test accuracy exactly.

The class lives here rather than on :class:`~nctune.training.strategies.TunedModel` because
prediction sits above the run folders (artifacts) in nctune's layers: the model class and
the loader must not import upwards, so this module binds ``predict`` after loading.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nctune.data import eval_transform, open_image
from nctune.errors import ConfigError, DataError, NctuneError, one_line
from nctune.runs.artifacts import load_finetuned as _load_run_model
from nctune.serving.inputs import DataSample, expand_inputs
from nctune.taps import resolve_device

__all__ = [
    "Prediction",
    "Predictions",
    "expand_inputs",
    "iter_predict",
    "load_finetuned",
    "predict",
]


@dataclass
class Prediction:
    """The outcome for one input image.

    Attributes:
        source: the image's path, or ``"<input i>"`` for an in-memory image.
        index: the predicted class index (None when the image could not be read).
        label: the predicted class name (``str(index)`` when the run records no names).
        probability: softmax probability of the predicted class.
        top_k: ``(label, probability)`` for the ``k`` most probable classes, best first.
        error: why the image could not be predicted (one line), else None.
    """

    source: str
    index: int | None = None
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was predicted."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row: ``path``, ``label``, ``index``, ``probability``, ``top_k``, ``error``."""
        return {
            "path": self.source,
            "label": self.label,
            "index": self.index,
            "probability": self.probability,
            "top_k": [{"label": lab, "probability": p} for lab, p in self.top_k],
            "error": self.error,
        }


@dataclass
class Predictions:
    """Predictions for a list of images, in input order.

    Attributes:
        items: one :class:`Prediction` per input.
        classes: the model's class names (index → name).
    """

    items: list[Prediction]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Prediction:
        return self.items[i]

    @property
    def labels(self) -> list[str | None]:
        """Predicted class names (None for images that failed)."""
        return [p.label for p in self.items]

    @property
    def indices(self) -> list[int | None]:
        """Predicted class indices (None for images that failed)."""
        return [p.index for p in self.items]

    @property
    def probabilities(self) -> list[float | None]:
        """Probability of each predicted class (None for images that failed)."""
        return [p.probability for p in self.items]

    @property
    def failed(self) -> list[Prediction]:
        """The images that could not be predicted."""
        return [p for p in self.items if not p.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: counts, classes and every row."""
        return {
            "num_images": len(self.items),
            "num_failed": len(self.failed),
            "classes": self.classes,
            "predictions": [p.to_dict() for p in self.items],
        }


def _classes(model: nn.Module) -> list[str]:
    classes = getattr(model, "classes", None)
    if classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(int(model.num_classes))]


def _transform(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    transform = getattr(model, "transform", None)
    if transform is None:
        input_config = getattr(model, "input_config", None)
        if input_config is None:
            raise NctuneError(
                "predict: the model has no input_config; load it with nctune.load_finetuned"
            )
        transform = eval_transform(input_config)
    return transform


def _error(err: Exception) -> str:
    return one_line(err)


def _prepare(item: Any, transform: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """One input → a model-ready (3, T, T) tensor; DataError etc. when it cannot be read."""
    if isinstance(item, torch.Tensor):
        if item.dtype == torch.uint8:  # raw pixels (C, H, W): the eval transform applies
            from torchvision.transforms.functional import to_pil_image

            return transform(to_pil_image(item))
        # already preprocessed (e.g. by model.transform); _check_item saw (3, T, T), finite
        return item.to(torch.float32)
    if isinstance(item, (str, os.PathLike)):
        return transform(open_image(os.fspath(item)))
    if isinstance(item, DataSample):  # read by its data source's reader
        return transform(item.image())
    if hasattr(item, "convert"):  # a PIL image
        return transform(item)
    raise DataError(f"cannot predict on a {type(item).__name__}; pass paths, PIL images or tensors")


def _count(name: str, value: Any, minimum: int) -> int:
    """An integer argument ``name`` of at least ``minimum`` (numpy integers too)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ConfigError(
            f"{name}: must be an integer, got {value!r} ({type(value).__name__})"
        ) from None
    if n < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {n}")
    return n


def _check_item(where: str, item: Any) -> None:
    """Refuse, before any work, an input that is not an image at all: a float tensor that
    is not one finite (3, T, T) image, or an object of another type. A file that cannot be
    read is not checked here: its row fails, the others go on."""
    if isinstance(item, torch.Tensor):
        if item.dtype == torch.uint8:  # raw pixels: the eval transform decides
            return
        if item.ndim != 3 or item.shape[0] != 3:
            raise ConfigError(
                f"{where}: a float tensor must be one preprocessed (3, T, T) image with "
                f"3 channels, got shape {tuple(item.shape)}"
            )
        if not bool(torch.isfinite(item).all()):
            raise ConfigError(f"{where}: the image tensor holds NaN or Inf values")
        return
    if isinstance(item, (str, os.PathLike, DataSample)) or hasattr(item, "convert"):
        return
    raise ConfigError(
        f"{where}: cannot predict on a {type(item).__name__}; pass paths, PIL images or tensors"
    )


def _as_list(images: Any) -> list[Any]:
    """:func:`predict`'s ``images`` as a list of single images; ConfigError naming
    ``images`` when it is neither an image, a (B, 3, T, T) batch nor a list of images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            return [images]
        if images.dtype != torch.uint8 and images.shape[1] != 3:
            raise ConfigError(
                f"images: a (B, 3, T, T) batch must have 3 channels, got shape "
                f"{tuple(images.shape)}"
            )
        return list(images)
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
        return [images]
    if type(images).__module__ == "numpy":  # an array would iterate row by row
        raise ConfigError(
            "images: a numpy array is not accepted; pass "
            "torch.from_numpy(a).permute(2, 0, 1) (uint8 H×W×3 pixels) or PIL.Image.fromarray(a)"
        )
    if isinstance(images, (Mapping, bytes)) or not isinstance(images, Iterable):
        raise ConfigError(
            "images: expected an image path, a PIL image, a tensor or a list of them, "
            f"got {type(images).__name__}"
        )
    return list(images)


def _not_finite(src: str, logits: torch.Tensor) -> str:
    bad = logits[~torch.isfinite(logits)][0].item()
    return (
        f"{src}: the model's output is not finite ({bad}); its weights hold NaN or Inf, "
        "or it overflows on this input"
    )


def _source(i: int, x: Any) -> str:
    """How row ``i`` names its image: the path, the data set sample, else its position."""
    if isinstance(x, DataSample):
        return x.source
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<input {i}>"


def _sources(images: Sequence[Any]) -> list[str]:
    return [_source(i, x) for i, x in enumerate(images)]


def iter_predict(
    model: nn.Module,
    images: Sequence[Any],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    top_k: int = 1,
    workers: int | None = None,
    strict: bool = False,
) -> Iterator[Prediction]:
    """Yield one :class:`Prediction` per image, in input order, batch by batch.

    The streaming form of :func:`predict` (the CLI writes each row as it comes). An image
    file that cannot be read yields a row with ``error`` set (a data set's
    :class:`~nctune.serving.inputs.DataSample` raises its source's DataError instead); the
    others are unaffected. So does an image whose logits are not finite (a model with NaN
    weights, or one that overflows on it): a NaN probability is never an answer.

    Args:
        model: a fine-tuned model (from :func:`load_finetuned`), or any classifier with
            ``num_classes`` and ``input_config`` (or ``transform``).
        images: paths, PIL images, uint8 ``(C, H, W)`` pixel tensors (transformed like
            files) or finite float ``(3, T, T)`` tensors already preprocessed (fed as they
            are).
        batch_size: images per forward pass.
        device: where to run (default: where the model's parameters are).
        top_k: how many of the most probable classes to list per image.
        workers: threads decoding and transforming images (default, or 0:
            ``min(4, CPUs)``).
        strict: raise :class:`~nctune.errors.DataError` for an image whose logits are not
            finite instead of yielding its error row (:func:`predict` does).

    Yields:
        :class:`Prediction` rows.

    Raises:
        ConfigError: before any work, one line naming the argument: ``batch_size`` or
            ``top_k`` not an integer ≥ 1, ``workers`` not one ≥ 0, a ``device`` that is not
            one (or is not available), ``model`` not a module, or ``images[i]`` that is
            no image (a float tensor other than one finite ``(3, T, T)`` image, or an
            object of another type).
        DataError: with ``strict``, an image whose logits are not finite.
    """
    batch_size = _count("batch_size", batch_size, 1)
    top_k = _count("top_k", top_k, 1)
    workers = _count("workers", workers, 0) if workers is not None else 0
    workers = workers or min(4, os.cpu_count() or 1)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a fine-tuned nn.Module, got {type(model).__name__}")
    for i, item in enumerate(images):
        _check_item(f"images[{i}]", item)
    classes = _classes(model)
    k = min(top_k, len(classes))
    transform = _transform(model)
    if device is not None:
        model.to(resolve_device(device))
    dev = next(model.parameters()).device
    model.eval()
    sources = _sources(images)

    def load(item: Any) -> torch.Tensor | Exception:
        try:
            return _prepare(item, transform)
        except (NctuneError, OSError, ValueError) as err:  # this image only; the rest go on
            if isinstance(item, DataSample):  # a data set's corrupt sample stops the run,
                raise  # as every command reading that data set does (one line, exit 2)
            return err

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded = list(pool.map(load, chunk)) if workers > 1 else [load(x) for x in chunk]
            good = [i for i, t in enumerate(loaded) if isinstance(t, torch.Tensor)]
            if good:
                x = torch.stack([loaded[i] for i in good]).to(dev)  # type: ignore[misc]
                with torch.inference_mode():
                    logits = model(x).float().cpu()
                finite = torch.isfinite(logits).all(dim=1)
                top_p, top_i = torch.softmax(logits, dim=1).topk(k, dim=1)
            row_of = {i: r for r, i in enumerate(good)}
            for i, t in enumerate(loaded):
                src = sources[start + i]
                if not isinstance(t, torch.Tensor):
                    yield Prediction(src, error=_error(t))
                    continue
                r = row_of[i]
                if not finite[r]:  # softmax would turn it into a NaN "probability"
                    if strict:
                        raise DataError(_not_finite(src, logits[r]))
                    yield Prediction(src, error=_not_finite(src, logits[r]))
                    continue
                idx = [int(j) for j in top_i[r]]
                ps = [float(p) for p in top_p[r]]
                yield Prediction(
                    src,
                    index=idx[0],
                    label=classes[idx[0]],
                    probability=ps[0],
                    top_k=[(classes[j], p) for j, p in zip(idx, ps, strict=True)],
                )


def predict(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    top_k: int = 1,
    workers: int | None = None,
) -> Predictions:
    """Classify images with a fine-tuned model.

    Each image is decoded to RGB and passed through ``model.transform`` (resize the shorter
    side to ``floor(T / crop_pct)``, centre-crop ``T×T``, ``(x/255 − mean)/std``); the
    probabilities are ``softmax(model(x))``, the label ``argmax``.

    Args:
        model: a fine-tuned model (from :func:`load_finetuned`).
        images: one image or a list of them: paths, PIL images, uint8 ``(C, H, W)`` pixel
            tensors, float ``(3, T, T)`` preprocessed tensors, or one float ``(B, 3, T, T)``
            batch of preprocessed images (not a numpy array: convert it first).
        batch_size: images per forward pass.
        device: where to run (default: where the model is).
        top_k: how many of the most probable classes each row lists.
        workers: threads decoding images (default ``min(4, CPUs)``).

    Returns:
        :class:`Predictions` in input order; unreadable images are rows with ``error``.

    Raises:
        ConfigError: before any work, one line naming the argument: ``images`` that are
            no images (None, a number, a mapping, a numpy array, a tensor without 3
            channels or holding NaN/Inf), or a bad ``batch_size``, ``top_k``, ``workers``
            or ``device`` (see :func:`iter_predict`).
        DataError: the model's logits for an image are not finite (NaN or Inf): no
            probability is made up for it.
    """
    images = _as_list(images)
    items = list(
        iter_predict(
            model,
            images,
            batch_size=batch_size,
            device=device,
            top_k=top_k,
            workers=workers,
            strict=True,
        )
    )
    return Predictions(items, _classes(model))


def load_finetuned(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild a fine-tuned run's model, ready to predict.

    :func:`nctune.runs.artifacts.load_finetuned` (weights, ``classes``, ``input_config``,
    ``transform``) plus ``model.predict(images, batch_size=…, device=…, top_k=…)``, which
    is :func:`predict` bound to the model.

    Args:
        path: an ``nctune finetune`` output folder, or the ``model.safetensors`` in it.
        device: where to put the model.

    Returns:
        The :class:`~nctune.training.strategies.TunedModel` in eval mode.

    Raises:
        ArtifactError: no model at ``path``, or a file that is not an nctune model.
        BackboneError: the recorded architecture cannot be rebuilt.
    """
    model = _load_run_model(path, device=device)
    model.predict = functools.partial(predict, model)
    return model
