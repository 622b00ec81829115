"""The run queue of ``compare``, ``ablate`` and ``sensitivity``: which runs still need doing, running
them one at a time or several at once (:mod:`.parallel` slots), recording each in the store as it
finishes, and stopping a sweep that a setup problem makes fail over and over.

Semantics, the same sequentially and in parallel:

* a run with an ``ok`` record is never run again (with ``retry_failed=False`` neither is a failed one);
* each run's record is appended to the store (``runs.jsonl``) as soon as it finishes, so an
  interruption loses only the runs in flight, which have no record and are redone next time;
* after :data:`MAX_IDENTICAL_CRASHES` runs in a row (in the order they finished) crashed with the
  same message no further run is started, the runs in flight finish and are recorded, and
  :class:`~mmrec_rearm.errors.RunsAbortedError` says what failed.
"""
from __future__ import annotations

import contextlib
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import Interrupted, RunsAbortedError
from .launch import StopRun, launch_run
from .parallel import Slot, make_slots, run_threads, sigterm_as_interrupt
from .plan import RunSpec
from .progress import ProgressDisplay
from .store import RunStore, now, run_record

Progress = Callable[[str], None]
#: ``start(spec, on_event, slot) -> result dict``: runs one spec (normally through :func:`.launch.launch_run`).
StartFunction = Callable[[RunSpec, Callable[[dict], None], Slot], dict]
#: ``run_fn(spec, extra_config, on_event) -> result dict``: replaces the subprocess launch (tests).
RunFunction = Callable[[RunSpec, Dict[str, Any], Callable[[dict], None]], dict]

#: A sweep stops when this many runs in a row crash with the same message: a setup problem (a
#: missing file, a broken environment) fails every remaining run the same way.
MAX_IDENTICAL_CRASHES = 3
_VARIABLE_PARTS = re.compile(r"[0-9a-f]{16}|\d+(?:\.\d+)?")


@dataclass(frozen=True)
class QueuedRun:
    """One run to do: ``label`` heads its progress line ("REARM [w/o uu] seed 999"), ``metric`` is
    its model's validation metric."""
    label: str
    spec: RunSpec
    metric: str


def format_config(config: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in config.items()) + "}"


def result_line(record: dict, metric: str) -> str:
    if record["status"] == "ok":
        valid = (record.get("valid") or {}).get(metric)
        test = (record.get("test") or {}).get(metric)
        return (f"    done in {record.get('wall_s', 0):.1f} s: best epoch {record.get('best_epoch')}, "
                f"valid {metric} {valid}, test {metric} {test}"
                + (f" ({record['message']})" if record.get("message") else ""))
    return f"    FAILED after {record.get('wall_s', 0):.1f} s: {record.get('message')} (log: {record.get('log_path')})"


def make_start(src: Path, python: str, results_root: Path, extra: Dict[str, Any], *, save_model: bool = False,
               timeout_s: Optional[float] = None, run_fn: Optional[RunFunction] = None) -> StartFunction:
    """The usual ``start``: :func:`.launch.launch_run` in MMRec's ``src`` with the results folder
    ``results_root`` (``<results>/<dataset>``: logs, training states, checkpoints), ``extra``
    (unhashed settings, plus the slot's device) and the slot's environment (its threads); ``run_fn``
    replaces the launch (tests)."""
    def start(spec: RunSpec, on_event: Callable[[dict], None], slot: Slot) -> dict:
        config = {**extra, **slot.config}
        if run_fn is not None:
            try:
                return run_fn(spec, config, on_event)
            except StopRun as stop:  # as launch does: a stop asked for by the event handler is a result
                return {"status": "stopped", "message": str(stop) or "stopped by the caller"}
        if slot.label:  # one of several slots
            slot.running.space_start()
        return launch_run(spec, src, python, results_root, extra=config, save_model=save_model, on_event=on_event,
                          timeout_s=timeout_s, env=slot.env, on_start=slot.running.add)
    return start


def crash_signature(record: dict) -> Optional[str]:
    """The message of a crashed run with run keys and numbers blanked, or None when the run did
    not crash (it finished, or ended as a training outcome such as a NaN loss, which has no error)."""
    if record.get("status") == "ok" or not record.get("error"):
        return None
    return _VARIABLE_PARTS.sub("#", str(record.get("message") or ""))


class CrashWatch:
    """Counts runs in a row that crashed the same way; :meth:`add` -> True when the sweep must stop."""

    def __init__(self, limit: int = MAX_IDENTICAL_CRASHES):
        self.limit = limit
        self.crashes: List[str] = []

    def add(self, record: dict) -> bool:
        signature = crash_signature(record)
        if signature is None or (self.crashes and self.crashes[-1] != signature):
            self.crashes = []
        if signature is not None:
            self.crashes.append(signature)
        return len(self.crashes) >= self.limit

    def error(self, record: dict, not_started: Optional[int], store_path) -> RunsAbortedError:
        """The error that stops the sweep; ``not_started``: runs left (None: an open-ended search)."""
        left = ("No further run was started" if not_started is None
                else f"The remaining {not_started} run(s) were not started")
        return RunsAbortedError(
            f"stopped: {len(self.crashes)} runs in a row failed with the same error: {record.get('message')} "
            f"(log: {record.get('log_path')}). {left}; "
            f"fix the cause and rerun the same command (finished runs are kept in {store_path}).")


def run_queue(queue: Sequence[QueuedRun], dataset: str, store: RunStore, latest: Dict[str, dict],
              say: Progress, *, execute: bool, retry_failed: bool, start: StartFunction,
              slots: Optional[Sequence[Slot]] = None) -> Tuple[int, int, int]:
    """Run each queued run that has no ``ok`` record (and, with ``retry_failed=False``, no record at
    all), appending its record to ``store`` and updating ``latest`` (key -> newest record).
    ``start(spec, on_event, slot)`` runs one and returns its result dict. ``slots`` (default: one,
    sequential) are the places runs execute in; with several, that many run at once, each from
    its own thread. Called with the store's lock held. -> ``(executed, skipped, failed)`` counts.

    Raises :class:`~mmrec_rearm.errors.RunsAbortedError` after :data:`MAX_IDENTICAL_CRASHES` runs
    in a row crashed with the same message (their records are kept and retried next time)."""
    slots = list(slots) if slots else make_slots()
    state = _QueueState(queue, dataset, store, latest, say, retry_failed, parallel=len(slots) > 1)
    if not execute:
        for index, item in state.pending():
            say(state.head(index, item) + " - not run (execute=False)")
        return state.executed, state.skipped, state.failed
    try:
        if len(slots) > 1:
            return _run_parallel(state, slots, start)
        with sigterm_as_interrupt():  # launch kills its run on the interrupt: no orphan keeps training
            for index, item in state.pending():
                state.in_flight = [item.label]
                say(state.head(index, item))
                started = now()
                result = start(item.spec, ProgressDisplay(say, indent="    "), slots[0])
                state.in_flight = []
                if state.finish(index, item, result, started):
                    raise state.crashes.error(state.last, len(queue) - index, store.path)
        return state.executed, state.skipped, state.failed
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise state.interrupted() from None


class _QueueState:
    """Book-keeping shared by the sequential and the parallel loop (one lock guards it)."""

    def __init__(self, queue, dataset, store, latest, say, retry_failed, parallel):
        self.queue, self.dataset, self.store, self.latest = list(queue), dataset, store, latest
        self.retry_failed, self.parallel = retry_failed, parallel
        self.lock = threading.Lock()
        self._say = say
        self.executed = self.skipped = self.failed = self.started = 0
        self.crashes = CrashWatch()
        self.last: Optional[dict] = None
        self.in_flight: List[str] = []  # labels of the runs running now (for the interrupt's account)
        self._iterator = iter(enumerate(self.queue, start=1))

    def say(self, message: str) -> None:
        with self.lock if self.parallel else contextlib.nullcontext():
            self._say(message)

    def interrupted(self) -> Interrupted:
        """The one-line account of an interrupt: what was stopped, what is kept, how to go on."""
        total = len(self.queue)
        recorded = sum(1 for queued in self.queue if self.latest.get(queued.spec.key, {}).get("status") == "ok")
        stopped = (f"stopped {', '.join(self.in_flight)} (not recorded). " if self.in_flight
                   else "stopped before the next run started. ")
        return Interrupted(
            f"{stopped}{self.executed} run(s) finished in this session; {recorded} of {total} are done and kept "
            f"in {self.store.path}. Run the same command again to do the remaining {total - recorded}.")

    def head(self, index: int, item: QueuedRun) -> str:
        return f"run {index} of {len(self.queue)}: {item.label} config {format_config(item.spec.config)}"

    def next_pending(self):
        """The next run that needs doing, or None; counts the skipped ones on the way."""
        for index, item in self._iterator:
            previous = self.latest.get(item.spec.key)
            if previous is not None and (previous.get("status") == "ok" or not self.retry_failed):
                self.skipped += 1
                continue
            self.started += 1
            return index, item
        return None

    def pending(self):
        while True:
            found = self.next_pending()
            if found is None:
                return
            yield found

    def finish(self, index: int, item: QueuedRun, result: dict, started: str) -> bool:
        """Record one finished run; -> True when the crash rule says stop."""
        record = run_record(result, item.spec, self.dataset, item.metric, started)
        self.store.append(record)
        self.latest[item.spec.key] = record
        self.executed += 1
        self.failed += record["status"] != "ok"
        self.last = record
        line = result_line(record, item.metric)
        self._say(f"[{item.label}] {line.strip()}" if self.parallel else line)
        return self.crashes.add(record)



def _run_parallel(state: _QueueState, slots: Sequence[Slot], start: StartFunction) -> Tuple[int, int, int]:
    stop, interrupted = threading.Event(), threading.Event()
    errors: List[BaseException] = []
    aborted: List[int] = []

    def worker(slot: Slot) -> None:
        while not stop.is_set():
            with state.lock:
                found = state.next_pending()
                if found is None:
                    return
                index, item = found
                state._say(f"{state.head(index, item)} [{slot.label}]")
                state.in_flight.append(item.label)
            prefix = f"[{item.label}] "
            printer = ProgressDisplay(lambda message: state.say(prefix + message.strip()), bar=False)
            started = now()
            try:
                result = start(item.spec, printer, slot)
            except BaseException as exc:  # an interrupt or a bug: no record, stop the others
                with state.lock:
                    errors.append(exc)
                interrupted.set()
                stop.set()
                slot.running.kill_all()
                return
            if interrupted.is_set():
                return  # killed by the interrupt: not a result, the next call redoes it
            with state.lock:
                state.in_flight.remove(item.label)
                if state.finish(index, item, result, started) and not aborted:
                    aborted.append(index)
                    stop.set()

    def interrupt() -> None:  # Ctrl-C / SIGTERM here: end every run in flight, record none of them
        interrupted.set()
        stop.set()
        slots[0].running.kill_all()

    run_threads([functools.partial(worker, slot) for slot in slots], interrupt, "run-slot")
    if errors:
        raise errors[0]
    if aborted:
        raise state.crashes.error(state.last, len(state.queue) - state.started - state.skipped, state.store.path)
    return state.executed, state.skipped, state.failed
