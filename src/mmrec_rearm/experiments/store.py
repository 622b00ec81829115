"""The results store: one JSON-lines file per dataset, ``<results>/<dataset>/runs.jsonl``.

Each finished run (ok or failed) is one line, appended in a single ``write`` on a file opened
with ``O_APPEND`` and fsynced before the next run starts, so an interruption (Ctrl-C, a killed
job, a power cut) can lose at most the line being written. The next append first ends a
truncated line with a newline so it cannot glue itself to a good line. For one key the last
valid line wins: a failed run that is retried and succeeds is reported as ok.

Every line is checked against the record schema (:data:`FIELDS`, :func:`record_problems`) when it
is read, and every record before it is appended. A line that does not parse or is incomplete
(a truncated write, a hand edit, a file written by another tool or version) is reported with its
line number, is never counted, and its run is redone by the next comparison; it never crashes one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from ..errors import ConfigError

try:  # advisory locks; POSIX only, the store still works without them
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]
STORE_NAME = "runs.jsonl"
SCHEMA = 1
_NONE = type(None)
#: field -> accepted types, for every record.
FIELDS: Dict[str, Tuple[type, ...]] = {
    "schema": (int,), "key": (str,), "status": (str,), "dataset": (str,), "model": (str,),
    "config_id": (str,), "config": (dict,), "seed": (int,),
}
#: further fields of a record whose status is "ok": metric name -> finite number.
OK_FIELDS = ("valid", "test")
#: optional fields that consumers read, when present.
OPTIONAL_FIELDS: Dict[str, Tuple[type, ...]] = {
    "epochs": (int, _NONE), "best_epoch": (int, _NONE), "wall_s": (int, float, _NONE),
    "checkpoint": (str, _NONE), "message": (str, _NONE), "host_fixes": (list, _NONE),
}
#: "pruned": a tuning trial its pruner stopped (kept for the pruner; the run is redone when needed);
#: "stopped": a run its caller ended early (:class:`~.launch.StopRun`), redone like a failed one.
STATUSES = ("ok", "failed", "pruned", "stopped")


def record_problems(record: Any, dataset: Optional[str] = None) -> List[str]:
    """What makes ``record`` not a complete run record (empty when it is one); each names the field."""
    if not isinstance(record, dict):
        return ["is not a JSON object"]
    found = []
    for name, types in FIELDS.items():
        if name not in record:
            found.append(f"lacks field '{name}'")
        elif not isinstance(record[name], types) or isinstance(record[name], bool):
            found.append(f"field '{name}' is a {type(record[name]).__name__}, expected {types[0].__name__}")
    for name, types in OPTIONAL_FIELDS.items():
        if name in record and (not isinstance(record[name], types) or isinstance(record[name], bool)):
            found.append(f"field '{name}' is a {type(record[name]).__name__}")
    if isinstance(record.get("schema"), int) and record["schema"] > SCHEMA:
        found.append(f"schema {record['schema']} is newer than this package reads ({SCHEMA})")
    if "status" in record and record["status"] not in STATUSES:
        found.append(f"field 'status' is {record['status']!r}, not one of {list(STATUSES)}")
    if dataset is not None and isinstance(record.get("dataset"), str) and record["dataset"] != dataset:
        found.append(f"belongs to dataset '{record['dataset']}', not '{dataset}'")
    if record.get("status") == "ok":
        for name in OK_FIELDS:
            metrics = record.get(name)
            if metrics is None:
                found.append(f"lacks field '{name}' (a finished run's metrics)")
            elif not isinstance(metrics, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in metrics.values()):
                found.append(f"field '{name}' holds something other than metric name -> number")
    return found


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

    def __init__(self, results_dir: PathLike, dataset: str, report: Optional[Callable[[str], None]] = None):
        """``report`` receives one line per unusable record (default: ``warnings.warn``)."""
        self.folder = Path(results_dir) / dataset
        self.path = self.folder / STORE_NAME
        self.dataset = dataset
        self.report = report

    # reading ------------------------------------------------------------------------------------
    def read(self) -> Tuple[List[dict], int]:
        """(valid records in file order, number of lines reported and skipped)."""
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
                    problems = ["is not a complete JSON record (an interrupted write?)"]
                else:
                    problems = record_problems(record, self.dataset)
                if problems:
                    bad += 1
                    self._report(f"{self.path}: line {number}: {'; '.join(problems)}; not counted; the run will "
                                 "be redone.")
                    continue
                records.append(record)
        return records, bad

    def _report(self, line: str) -> None:
        if self.report is not None:
            self.report(line)
        else:
            warnings.warn(line, stacklevel=3)

    def latest(self) -> Dict[str, dict]:
        """key -> the last record written for it."""
        out: Dict[str, dict] = {}
        for record in self.read()[0]:
            out[record["key"]] = record
        return out

    # writing ------------------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Append one record as one line, durably (write + fsync)."""
        problems = record_problems(record, self.dataset)
        if problems:
            raise ConfigError(f"{self.path}: not a complete run record ({'; '.join(problems)}); nothing was "
                              "written.")
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

    @contextlib.contextmanager
    def run_lock(self, key: str) -> Iterator[None]:
        """Hold ``locks/<key>.lock`` (blocking): two tuning workers that pick the same configuration
        at the same moment run it once, the second then reads the first one's record."""
        folder = self.folder / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
