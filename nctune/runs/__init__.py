"""Run folders on disk: ``_io`` (atomic files, strict JSON), ``_model_meta`` (the model
file's metadata schema), ``_lock`` (claims on folders),
``artifacts`` (the files of a finished run, ``load_finetuned``'s reader), ``folder``
(``RunFolder``: a fine-tuning run's folder from claim to commit)."""
