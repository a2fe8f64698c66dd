"""Error types. Stdlib only, so every layer (``collapse`` included) can import it.

A :class:`NctuneError` is a problem with the user's input (a recipe field, a file,
a dataset). The CLI prints ``str(err)`` on one line and exits with code 2; every
other exception is an internal bug and exits with code 1.
"""

from __future__ import annotations


class NctuneError(Exception):
    """Bad input: the message is one line that names the field or file and what to do."""


class ConfigError(NctuneError):
    """A recipe file or ``--set`` override is malformed or invalid."""


class DataError(NctuneError):
    """A dataset path, file, label or split cannot be used."""


class BackboneError(NctuneError):
    """A backbone name, weights file or layer name cannot be used."""


class CollapseError(NctuneError, ValueError):
    """Features or labels fed to the collapse statistics are invalid."""


class ArtifactError(NctuneError):
    """A run folder cannot be written, read or resumed."""


class ExportError(NctuneError):
    """A model cannot be exported, or its export does not reproduce the PyTorch model."""


class TrainingError(NctuneError):
    """Training cannot go on with these settings (the loss or weights became non-finite)."""


class Interrupted(KeyboardInterrupt):
    """A stop request (a ``should_stop`` callback) ended a pass between two batches.

    A :class:`KeyboardInterrupt`, so code that does not know it treats it as Ctrl-C. The
    pass that raised it kept nothing half-made (no partial profile or cache).
    """
