"""Exceptions for errors the user can fix (config, files, checkpoints, data, devices).

Detectron2-free, so the framework-agnostic core (``mgd_det.matching``) can raise them too.
The command-line layer (:mod:`mgd_det.engine.cli`) turns any :class:`MGDUserError` into one
line on the terminal -- ``ERROR: <what>, <which key/file>, <how to fix>`` -- and an exit
code != 0, keeping the traceback for the run's log file; every other exception is a bug and
keeps its traceback. So: raise an :class:`MGDUserError` (or a subclass) exactly when the
message alone tells the user what to change.

The subclasses also derive from the built-in type that callers caught before they existed
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` still works.
"""
from typing import Optional


class MGDUserError(ValueError):
    """An anticipated error with a complete, actionable message.

    Args:
        message: what is wrong, which key or file, and how to fix it (one sentence or two).
        key: the config key at fault, if any (kept for tests and tools).
        path: the file at fault, if any.
    """

    def __init__(self, message: str, *, key: Optional[str] = None, path: Optional[str] = None):
        super().__init__(message)
        self.key = key
        self.path = path

    def __str__(self) -> str:  # KeyError's quoting would otherwise win in subclasses
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # picklable with its keyword arguments (multi-process launch)
        return (_rebuild, (type(self), str(self), self.key, self.path))


def _rebuild(cls, message, key, path):
    return cls(message, key=key, path=path)


class ConfigError(MGDUserError):
    """A config value is missing, of the wrong type, out of range or unknown."""


class UnknownConfigKeyError(ConfigError, KeyError):
    """A config file or option sets a key that no ``add_*_config`` declared."""


class UserFileNotFoundError(MGDUserError, FileNotFoundError):
    """A file the config or the command line points at does not exist."""


class DataError(MGDUserError):
    """A data set or one of its files (annotations, images) cannot be used."""


class CheckpointError(MGDUserError, RuntimeError):
    """A checkpoint cannot be read, written, or does not fit the model."""
