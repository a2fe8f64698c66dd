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


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An error as one line of a message: the one way nctune flattens an error.

    White space (newlines included) is folded to single spaces. An exception that is not an
    :class:`NctuneError` is prefixed by its class name (``ValueError: …``): its message was
    written for a programmer, not for this context; an :class:`NctuneError`'s message is
    already the line to show. An exception without a message reads as its class name.

    Args:
        error: an exception, or a text (folded as it is, without a class name).
        limit: at most this many characters; a longer line ends in ``...``.

    Returns:
        The line, without a newline.
    """
    text = " ".join(str(error).split())
    if not isinstance(error, str):
        name = type(error).__name__
        if not text:
            text = name
        elif not isinstance(error, NctuneError):
            text = f"{name}: {text}"
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text
