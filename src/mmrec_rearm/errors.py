"""Exception types of mmrec-rearm.

Every message names the offending file, field or value and says what to do about it, so a
researcher can fix the input without reading our code.
"""
from __future__ import annotations


class RearmError(Exception):
    """Base class of every error this package raises on purpose."""


class DatasetError(RearmError, ValueError):
    """A dataset file is missing, malformed or inconsistent (message names file, field, value)."""


class GraphParamError(RearmError, ValueError):
    """A graph parameter has a bad name, type or value (for example k >= number of nodes)."""


class CacheError(RearmError):
    """The on-disk graph cache cannot be used."""


class CacheCorruptError(CacheError):
    """A cache entry failed its integrity check; it is dropped and rebuilt."""


class ConfigError(RearmError, ValueError):
    """A model configuration key has a bad value."""


class InstallError(RearmError):
    """Installing into / uninstalling from an MMRec checkout was refused."""


class CheckpointError(RearmError, KeyError):
    """A state_dict could not be mapped onto the model (lists missing / unexpected keys)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class PlotDependencyError(RearmError, ImportError):
    """Drawing a figure needs the optional package matplotlib."""


class RunsAbortedError(RearmError):
    """A sweep stopped because several runs in a row failed the same way (a setup problem, not a result)."""


class OutputError(RearmError, OSError):
    """An output file or folder cannot be written (message names the path, the reason and the fix).
    ``errno`` is the underlying error number, when there is one."""

    def __init__(self, message: str, errno_code: "int | None" = None):
        super().__init__(message)
        self.errno = errno_code


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a command; the message says what finished and how to resume.

    A KeyboardInterrupt (not a RearmError) so that no ``except Exception`` on the way swallows it;
    the CLI prints its message as one line."""
