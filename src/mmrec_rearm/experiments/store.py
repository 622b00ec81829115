"""The results store: one JSON-lines file per dataset, ``<results>/<dataset>/runs.jsonl``.

Each finished run (ok or failed) is one line, appended in a single ``write`` on a file opened
with ``O_APPEND`` and fsynced before the next run starts, so an interruption (Ctrl-C, a killed
job, a power cut) can lose at most the line being written. A line that does not parse (the
truncated tail of such an interruption) is skipped when reading, with a warning, and the next
append first ends it with a newline so it cannot glue itself to a good line. For one key the
last line wins: a failed run that is retried and succeeds is reported as ok.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union

from ..errors import ConfigError

try:  # advisory locks; POSIX only, the store still works without them
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]
STORE_NAME = "runs.jsonl"
SCHEMA = 1


def now() -> str:
    """Local time with offset, to the second: the ``started`` / ``finished`` stamps of a record."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_record(result: dict, spec, dataset: str, valid_metric: str, started: str) -> dict:
    """The store's record of one run: the runner's ``result`` plus what identifies the run
    (``spec``: a :class:`~.plan.RunSpec`)."""
    return {**result, "schema": SCHEMA, "key": spec.key, "config_id": spec.config_id, "dataset": dataset,
            "model": spec.model, "config": spec.config, "seed": spec.seed, "epochs": spec.epochs,
            "valid_metric": valid_metric, "status": result.get("status", "failed"), "started": started,
            "finished": now()}


class RunStore:
    """Append-only JSON-lines file of run records for one dataset."""

    def __init__(self, results_dir: PathLike, dataset: str):
        self.folder = Path(results_dir) / dataset
        self.path = self.folder / STORE_NAME

    # reading ------------------------------------------------------------------------------------
    def read(self) -> Tuple[List[dict], int]:
        """(records in file order, number of unreadable lines skipped)."""
        if not self.path.is_file():
            return [], 0
        records, bad = [], 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    bad += 1
                    warnings.warn(f"{self.path}: line {number} is not a complete JSON record "
                                  "(an interrupted write?); ignoring it, the run will be redone.",
                                  stacklevel=2)
                    continue
                if not isinstance(record, dict) or "key" not in record or "status" not in record:
                    bad += 1
                    warnings.warn(f"{self.path}: line {number} has no 'key'/'status'; ignoring it.",
                                  stacklevel=2)
                    continue
                records.append(record)
        return records, bad

    def latest(self) -> Dict[str, dict]:
        """key -> the last record written for it."""
        out: Dict[str, dict] = {}
        for record in self.read()[0]:
            out[record["key"]] = record
        return out

    # writing ------------------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Append one record as one line, durably (write + fsync)."""
        if "key" not in record or "status" not in record:
            raise ConfigError(f"{self.path}: a run record needs 'key' and 'status', got keys {sorted(record)}.")
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a truncated line: close it off, it stays unreadable
                    line = b"\n" + line
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing also drops the lock

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``runs.lock`` so that two comparisons never run the same dataset's runs twice."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_path = self.folder / "runs.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ConfigError(
                        f"{lock_path}: another comparison is running on this results folder and "
                        "dataset; wait for it, or use another --results folder."
                    ) from None
            yield
        finally:
            os.close(fd)
