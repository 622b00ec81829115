"""Writing files so that a failure never leaves a torn one, and checking output folders up front.

Every file this package writes (exported graphs, tables, figures, checkpoints, the install ledger,
``user_graph_dict.npy``, ...) goes through :func:`atomic_open`: the bytes go to a temporary file in
the target's own folder (same file system, so the rename is atomic), are flushed and fsynced, and
the temporary file is renamed over the target with ``os.replace``. A write that fails (full disk,
quota, a killed process) leaves the previous file or none, never a torn one; the temporary file
is removed. Temporary names start with ``.`` and end in ``.tmp`` so that a crash leftover is
recognisable.

Only the standard library is imported: the runner (run by path inside MMRec's process, without
this package on ``sys.path``) loads this file directly.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import IO, Iterator, Union

try:
    from .errors import OutputError
except ImportError:  # loaded by file path (the runner): no package, plain OSError subclasses
    class OutputError(OSError):  # type: ignore[no-redef]
        """A file could not be written (message names the path and the fix)."""

        def __init__(self, message: str, errno_code: "int | None" = None):
            super().__init__(message)
            self.errno = errno_code

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_open", "write_bytes", "write_text", "check_writable", "OutputError"]

_FIXES = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space (disk quota exceeded) or choose another folder",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit or write elsewhere",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another folder",
}


def _explain(path: str, exc: OSError, what: str) -> OutputError:
    fix = _FIXES.get(exc.errno or 0, "check the folder and try again")
    reason = exc.strerror or str(exc)
    return OutputError(f"{path}: cannot write {what} ({reason}); {fix}. Nothing was changed at this path.",
                       exc.errno)


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once, when the module loads: reading it means setting it, and a write in one thread must not
# leave another thread's files (a parallel compare or tune writes from several) created with umask 0.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, what: str = "the file",
                encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding``). An exception inside the block, or a failed
    flush / fsync / rename, removes the temporary file and leaves ``path`` as it was; an OSError is
    re-raised as :class:`OutputError` naming ``path``, ``what`` is written and the fix. The folder
    must exist (see :func:`check_writable`).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}: atomic_open writes whole files ('wb' or 'w')")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _explain(path, exc, what) from None
    try:
        with os.fdopen(fd, mode, **({"encoding": encoding, "newline": ""} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a file we publish gets the usual permissions (umask applies)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except OSError as exc:
        _remove_quietly(temporary)
        if isinstance(exc, OutputError):
            raise
        raise _explain(path, exc, what) from None
    except BaseException as exc:
        _remove_quietly(temporary)
        cause = _os_error_behind(exc)
        if cause is not None:  # e.g. zipfile's close failing after the disk filled up mid-write
            raise _explain(path, cause, what) from None
        raise


def _os_error_behind(exc: BaseException):
    """The OSError that led to ``exc`` (its cause or context chain), or None."""
    seen = set()
    current = exc.__cause__ or exc.__context__
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_bytes(path: PathLike, data: bytes, *, what: str = "the file") -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", what=what) as handle:
        handle.write(data)


def write_text(path: PathLike, text: str, *, what: str = "the file", encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    write_bytes(path, text.encode(encoding), what=what)


def check_writable(folder: PathLike, *, what: str = "output files", create: bool = True) -> str:
    """Make sure files can be created in ``folder`` (created with its parents when ``create``),
    before long work starts. -> the folder's absolute path.

    Creating and deleting a probe file is the only reliable test (``os.access`` misses read-only
    mounts, ACLs and root's exemptions). Raises :class:`OutputError` naming the folder and the fix.
    """
    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{folder}: exists and is not a folder, so {what} cannot go there; choose a folder path.",
                          errno.ENOTDIR)
    try:
        if create:
            os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = _FIXES.get(exc.errno or 0, "choose a folder you can write to")
        raise OutputError(f"{folder}: cannot write {what} there ({reason}); {fix}.", exc.errno) from None
    return folder
