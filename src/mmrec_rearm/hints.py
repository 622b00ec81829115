"""How messages name our own commands, so that every printed hint runs as pasted.

A hint quotes the program the way the user started it (``.venv/bin/mmrec-rearm`` stays that,
``mmrec-rearm`` when that is on the PATH, else ``<python> -m mmrec_rearm.cli``), real paths
instead of placeholders, and shell quoting where a path needs it.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Union

__all__ = ["program", "command"]


def program() -> str:
    """The shell words that start ``mmrec-rearm`` here."""
    started = sys.argv[0] if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("mmrec-rearm")
    if os.path.basename(started) == "mmrec-rearm":
        if on_path and os.path.realpath(on_path) == os.path.realpath(started):
            return "mmrec-rearm"
        return shlex.quote(started)
    if on_path:
        return "mmrec-rearm"
    return f"{shlex.quote(sys.executable)} -m mmrec_rearm.cli"


def command(*words: Union[str, "os.PathLike[str]"]) -> str:
    """``mmrec-rearm WORDS...`` as one shell line (each word quoted when it needs it)."""
    return " ".join([program()] + [shlex.quote(str(word)) for word in words])
