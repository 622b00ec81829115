"""Child processes that never outlive the command that started them.

MMRec runs in a subprocess (``compare`` / ``ablate`` / ``sensitivity`` start one per run,
``quickstart`` one for its demo training). Two guarantees:

* **the parent dies, the child dies**: on Linux the child asks the kernel, between ``fork`` and
  ``exec``, for ``SIGKILL`` when its parent thread exits (``prctl(PR_SET_PDEATHSIG)``, called through
  ctypes). That covers ``kill -9`` of the parent, which no handler in the parent can see. If the
  parent died before the request took effect, the child exits at once. Elsewhere the request is
  skipped (documented in docs/reliability.md). The child must be started from the thread that
  lives as long as the command (the main thread here): the kernel watches the thread.
* **Ctrl-C stops the child promptly**: :func:`stop` sends ``SIGTERM`` and, after ``grace_s``,
  ``SIGKILL``. A child of the same terminal also gets the terminal's ``SIGINT`` itself.
* **SIGTERM is an interrupt too** (:func:`sigterm_as_interrupt`): ``kill``, or a scheduler ending or
  preempting a job, then stops the runs in flight like Ctrl-C instead of leaving them training.

Only the standard library is used.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

__all__ = ["start", "stop", "dies_with_parent_supported", "sigterm_as_interrupt"]

_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once in the parent: between fork and exec the child only calls it (no dlopen, no locks).
_PRCTL = _find_prctl()


def dies_with_parent_supported() -> bool:
    """True where :func:`start` can tie a child's life to its parent (Linux with a C library prctl)."""
    return _PRCTL is not None


def _tie_to(parent: int) -> Callable[[], None]:
    def in_child() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone: the kernel will not tell us again
            os._exit(1)
    return in_child


def start(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(command, **popen_kwargs)`` whose process is killed when this one exits."""
    return subprocess.Popen(list(command), preexec_fn=_tie_to(os.getpid()), **popen_kwargs)


def stop(process: subprocess.Popen, grace_s: float = 5.0) -> Optional[int]:
    """End ``process``: ``SIGTERM``, then ``SIGKILL`` after ``grace_s`` seconds. -> its exit status."""
    if process.poll() is not None:
        return process.returncode
    try:
        process.terminate()
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
    except OSError:  # already reaped
        return process.poll()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a scheduler ending or preempting a job) raises
    KeyboardInterrupt like Ctrl-C, so the runs in flight are killed and left unrecorded instead of
    training on as orphans. Only from the main thread (the one Python delivers signals to)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
