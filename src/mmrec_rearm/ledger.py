"""The install ledger: which files and folders mmrec-rearm put into an MMRec checkout, with the
content hash of each file as it was written.

Modelled on pip's ``RECORD``: one CSV file, ``<checkout>/.mmrec-rearm-RECORD``, one row per path::

    src/models/rearm.py,sha256=VGhpcyBpcyBhbiBleGFtcGxl...,59
    src/configs/model/REARM.yaml,sha256=...,4410
    data/rearm_demo/,,
    data/rearm_demo/rearm_demo.inter,sha256=...,612345

Columns: the path (POSIX, relative to the checkout root; absolute when it lies outside, e.g. an
MMRec ``data_path`` elsewhere), ``sha256=`` + the urlsafe base64 digest without padding (pip's
encoding), and the size in bytes. A row whose path ends in ``/`` and has no hash is a folder we
created; it is removed only when everything in it is ours and unchanged.

The ledger is the only proof of ownership: a file is ours exactly when it is listed and its bytes
still hash to the recorded digest. A file at one of our paths that is not listed (the user's own,
or a copy the user made of one of ours) or whose hash differs (the user edited it) is never
overwritten or deleted without ``--force``, and even then it is moved to ``FILE.bak``, never
deleted. The ledger itself is written atomically.

Only the standard library (and this package's errors / atomic writer) is used.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

from .atomic import write_text
from .errors import InstallError

__all__ = ["LEDGER_NAME", "Entry", "Ledger", "digest", "file_digest", "backup_name"]

PathLike = Union[str, "os.PathLike[str]"]
#: Name of the ledger file at the checkout root.
LEDGER_NAME = ".mmrec-rearm-RECORD"
_HASH = "sha256"


def digest(content: bytes) -> str:
    """``sha256=<urlsafe base64, no padding>`` of ``content`` (pip's RECORD encoding)."""
    raw = hashlib.sha256(content).digest()
    return f"{_HASH}=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def file_digest(path: PathLike) -> str:
    """:func:`digest` of the file at ``path``, read in blocks (feature files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return f"{_HASH}=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")


def backup_name(path: Path) -> Path:
    """``FILE.bak``, or ``FILE.bak.1``, ``FILE.bak.2``, ... when that exists already."""
    candidate = path.with_name(path.name + ".bak")
    number = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.name}.bak.{number}")
        number += 1
    return candidate


@dataclass(frozen=True)
class Entry:
    """One ledger row: a file (``digest`` and ``size`` set) or a folder (``is_folder``)."""
    key: str                 # the path as written in the ledger (folders end in "/")
    digest: str = ""
    size: Optional[int] = None

    @property
    def is_folder(self) -> bool:
        return self.key.endswith("/")


class Ledger:
    """The ledger of the checkout at ``root`` (see the module doc). Changes stay in memory until
    :meth:`save`."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.path = self.root / LEDGER_NAME
        self.entries: Dict[str, Entry] = {}

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, root: PathLike) -> "Ledger":
        """The ledger of ``root`` (empty when the file does not exist). A malformed row is an
        :class:`InstallError` naming the file and line: guessing ownership could delete user work."""
        ledger = cls(root)
        if not ledger.path.is_file():
            return ledger
        text = ledger.path.read_text(encoding="utf-8")
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row:
                continue
            problem = _row_problem(row)
            if problem:
                raise InstallError(
                    f"{ledger.path}: line {number} {problem} ({','.join(row)!r}); the ledger records which files "
                    "mmrec-rearm may remove, so it is not guessed: restore the line, or delete the ledger and "
                    "remove mmrec-rearm's files by hand.")
            key = row[0]
            ledger.entries[key] = Entry(key) if key.endswith("/") else Entry(key, row[1], int(row[2]))
        return ledger

    def key(self, path: PathLike) -> str:
        """The ledger's name for ``path``: relative to the root when inside it, else absolute."""
        absolute = Path(os.path.abspath(path))
        root = Path(os.path.abspath(self.root))
        try:
            return absolute.relative_to(root).as_posix()
        except ValueError:
            return absolute.as_posix()

    def resolve(self, key: str) -> Path:
        """The path a ledger key names."""
        plain = key.rstrip("/")
        return Path(plain) if os.path.isabs(plain) else self.root / plain

    def file_entry(self, path: PathLike) -> Optional[Entry]:
        return self.entries.get(self.key(path))

    def has_folder(self, path: PathLike) -> bool:
        return self.key(path) + "/" in self.entries

    def state(self, path: PathLike) -> str:
        """``"absent"`` (nothing there), ``"ours"`` (listed, same hash), ``"changed"`` (listed,
        different bytes, or no longer a plain file) or ``"foreign"`` (exists, not listed)."""
        path = Path(path)
        entry = self.file_entry(path)
        if not (path.exists() or path.is_symlink()):
            return "absent"
        if entry is None:
            return "foreign"
        if path.is_symlink() or not path.is_file():
            return "changed"
        if path.stat().st_size != entry.size:
            return "changed"
        return "ours" if file_digest(path) == entry.digest else "changed"

    def files_under(self, folder_key: str) -> Iterator[Entry]:
        """File entries inside the folder entry ``folder_key`` (at any depth)."""
        for key, entry in self.entries.items():
            if not entry.is_folder and key.startswith(folder_key):
                yield entry

    def folders(self) -> List[Entry]:
        return [entry for entry in self.entries.values() if entry.is_folder]

    # -- changing ----------------------------------------------------------------------------
    def record_file(self, path: PathLike, content: bytes) -> None:
        key = self.key(path)
        self.entries[key] = Entry(key, digest(content), len(content))

    def record_folder(self, path: PathLike) -> None:
        key = self.key(path) + "/"
        self.entries[key] = Entry(key)

    def forget(self, key: str) -> None:
        self.entries.pop(key, None)

    def save(self) -> None:
        """Write the ledger atomically; an empty ledger is deleted instead."""
        if not self.entries:
            if self.path.is_file():
                self.path.unlink()
            return
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for key in sorted(self.entries):
            entry = self.entries[key]
            writer.writerow([key, "", ""] if entry.is_folder else [key, entry.digest, entry.size])
        write_text(self.path, out.getvalue(), what="the mmrec-rearm install ledger")


def _row_problem(row: List[str]) -> str:
    if len(row) != 3:
        return f"has {len(row)} fields, not 3 (path, hash, size)"
    key, hashed, size = row
    if not key or key.startswith("../") or "/../" in key:
        return "has an empty or escaping path"
    if key.endswith("/"):
        return "" if not hashed and not size else "is a folder row with a hash or size"
    if not hashed.startswith(f"{_HASH}=") or not size.isdigit():
        return f"lacks a '{_HASH}=' hash or a byte size"
    return ""
