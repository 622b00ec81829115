"""``run``: one training run of any MMRec model through MMRec's own ``quick_start``, with
command-line overrides, live progress and resume.

A run is one (model, configuration, seed, epoch budget), the same unit as a run of ``compare``:
its key, its record in ``<results>/<dataset>/runs.jsonl``, its log, its training state and (for
REARM) its checkpoint live where ``compare`` keeps them, so a finished ``run`` is a finished run of
a later ``compare`` with the same settings, and the other way round. The configuration is the
model's YAML with ``--set`` applied; a key the YAML grid-searches (``hyper_parameters``) takes its
first candidate unless ``--set`` pins it (the run says which it took).

:func:`prepare_run` does everything before the launch (checks, staging, the spec) and is what
other commands use to start a single run their own way (e.g. a tuner with its own event handler
that raises :class:`~.launch.StopRun` to prune); :func:`run_one` adds the store, the display and
the summary.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import Interrupted
from ..processes import sigterm_as_interrupt
from .launch import EventHandler, OnStart, launch_run, state_file
from .mmrec_config import check_model, mmrec_src
from .parallel import thread_env
from .plan import FIRST_SEED, RunSpec, build_plan
from .prepare import (check_features, check_python, device_settings, ensure_dataset, prepare_user_graph,
                      prepared_store, user_path)
from .progress import ProgressDisplay
from .stats import TABLE_METRICS, near_cap
from .store import RunStore, now, run_record
from .user_graph import DEFAULT_NEIGHBOURS

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[str], None]

__all__ = ["PreparedRun", "prepare_run", "run_one"]


@dataclass
class PreparedRun:
    """Everything :func:`~.launch.launch_run` needs for one run, checked and staged."""
    src: Path                      # MMRec's src/
    spec: RunSpec
    extra: Dict[str, Any]          # config for the run that is not part of its key (data_path, device)
    results_root: Path             # <results>/<dataset>
    valid_metric: str              # MMRec's valid_metric, lower case
    python: str
    notes: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # for the run's subprocess (its thread counts)

    @property
    def state_path(self) -> Path:
        return state_file(self.results_root, self.spec.key)

    @property
    def store(self) -> RunStore:
        return RunStore(self.results_root.parent, self.spec.dataset)

    def launch(self, on_event: Optional[EventHandler] = None, *, timeout_s: Optional[float] = None,
               resume: bool = True, keep_state: bool = False, on_start: Optional[OnStart] = None) -> dict:
        """Start the run (resuming from its state when there is one) -> the runner's result."""
        return launch_run(self.spec, self.src, self.python, self.results_root, extra=self.extra,
                          on_event=on_event, timeout_s=timeout_s, resume=resume, keep_state=keep_state,
                          env=self.env, on_start=on_start)


def prepare_run(mmrec_dir: PathLike, dataset: str, model: str = "REARM", *, epochs: Optional[int] = None,
                overrides: Sequence[str] = (), seed: int = FIRST_SEED, device: Optional[str] = None,
                threads: Optional[int] = None, results_dir: PathLike = "results", python: str = sys.executable,
                data_dir: Optional[PathLike] = None, execute: bool = True,
                user_graph_k: int = DEFAULT_NEIGHBOURS, progress: Progress = print) -> PreparedRun:
    """Check and stage one run (see the module doc); raises a RearmError naming what to fix.

    ``overrides``: ``key=value`` (or ``MODEL.key=value``) items as in ``compare``; ``device``:
    ``cpu``, ``cuda`` or ``cuda:K`` (None: MMRec's default); ``threads``: the run's thread count
    (None: as torch chooses); ``execute=False`` writes nothing.
    """
    src = mmrec_src(mmrec_dir)
    check_model(src, model)
    env = thread_env(threads) if threads is not None else {}
    if execute:
        check_python(python)
    results_dir = user_path(results_dir)  # the run starts in MMRec's src/
    results_root = results_dir / dataset
    folder, extra = ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
                                   results_root, write_yaml=execute, progress=progress)
    plan = build_plan(src, dataset, [model], [seed], epochs, overrides)
    notes = list(plan.warnings)
    configs = plan.configs[model]
    if len(configs) > 1:
        searched = [k for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1]
        notes.append(f"{model}'s YAML grid-searches {', '.join(searched)} ({len(configs)} configurations); this "
                     f"run takes the first candidate of each: "
                     f"{', '.join(f'{k}={configs[0][k]}' for k in searched)}. Pin others with --set KEY=VALUE, "
                     "or run the whole grid with compare.")
    spec = plan.runs[0]
    extra.update(device_settings(device))
    check_features(src, dataset, folder, model, {**spec.config, **extra})
    if execute:
        extra.update(prepare_user_graph(src, folder, dataset, [model], user_graph_k, progress))
    return PreparedRun(src, spec, extra, results_root, plan.valid_metric[model], python, notes, env)


def _describe(run: PreparedRun, device: Optional[str]) -> List[str]:
    spec = run.spec
    config = ", ".join(f"{k}={v}" for k, v in spec.config.items()) or "the YAML files' values"
    where = device or "MMRec's default (the first GPU when there is one, else the CPU)"
    return [f"{spec.model} on {spec.dataset}, seed {spec.seed}, "
            f"{spec.epochs if spec.epochs is not None else 'the YAML files'} epochs (early stopping as configured), "
            f"device {where}",
            f"settings: {config}",
            f"results: {run.store.path} (run {spec.key}); training state: {run.state_path}"]


def summary_lines(record: dict, metric: str) -> List[str]:
    """What ``run`` prints when a run has ended: the best epoch, validation and test numbers."""
    if record.get("status") != "ok":
        return [f"FAILED after {record.get('wall_s', 0):.1f} s: {record.get('message')}",
                f"log: {record.get('log_path')}"]
    valid, test = record.get("valid") or {}, record.get("test") or {}
    cap = record.get("epoch_cap")
    lines = [f"done in {record.get('wall_s', 0):.1f} s: best epoch {record.get('best_epoch')} of "
             f"{record.get('epochs_run')} run{f' (cap {cap})' if cap else ''}"
             + (f"; {record['message']}" if record.get("message") else ""),
             f"valid {metric} {valid.get(metric)}",
             "test  " + "  ".join(f"{label} {test[key]:.4f}" for label, key in TABLE_METRICS if key in test)]
    if near_cap(record):
        lines.append(f"warning: the best epoch is at the epoch cap ({record.get('best_epoch')} of {cap}): the model "
                     "was still improving; rerun with a larger --epochs for a converged result")
    if record.get("checkpoint"):
        lines.append(f"checkpoint (best epoch): {record['checkpoint']}")
    return lines


def run_one(mmrec_dir: PathLike, dataset: str, model: str = "REARM", *, epochs: Optional[int] = None,
            overrides: Sequence[str] = (), seed: int = FIRST_SEED, device: Optional[str] = None,
            threads: Optional[int] = None, results_dir: PathLike = "results", python: str = sys.executable,
            data_dir: Optional[PathLike] = None,
            fresh: bool = False, execute: bool = True, timeout_s: Optional[float] = None,
            progress: Progress = print, on_event: Optional[EventHandler] = None) -> Optional[dict]:
    """Train one run and record it; returns its record (None with ``execute=False``).

    A run whose record is already ``ok`` is not trained again (its record is returned) unless
    ``fresh``; an interrupted run continues from its last finished epoch unless ``fresh``.
    ``on_event`` also receives every progress event (after the display). A ``fresh`` run ignores
    the saved state and overwrites it after its first epoch. Ctrl-C or SIGTERM stops the run and
    raises :class:`~mmrec_rearm.errors.Interrupted` saying where its training state is.
    """
    run = prepare_run(mmrec_dir, dataset, model, epochs=epochs, overrides=overrides, seed=seed, device=device,
                      threads=threads, results_dir=results_dir, python=python, data_dir=data_dir, execute=execute,
                      progress=progress)
    for note in run.notes:
        progress(f"note: {note}")
    for line in _describe(run, device):
        progress(line)
    store = prepared_store(run.results_root.parent, dataset, progress) if execute else run.store
    previous = store.latest().get(run.spec.key)
    if previous is not None and previous.get("status") == "ok" and not fresh:
        progress(f"already finished on {previous.get('finished')}; its record is shown (--fresh trains it again)")
        for line in summary_lines(previous, run.valid_metric):
            progress(line)
        return previous
    if not execute:
        progress("dry run: checks passed, nothing started" + (f" (a saved state would be resumed: {run.state_path})"
                                                            if run.state_path.exists() and not fresh else ""))
        return None
    display = ProgressDisplay(progress)
    saved: Dict[str, Any] = {}

    def handle(event: dict) -> None:
        if event.get("event") == "state":
            saved.update(epoch=event.get("epoch"), path=event.get("path"))
        display(event)
        if on_event is not None:
            on_event(event)

    started = now()
    began = time.time()
    try:
        with sigterm_as_interrupt():
            result = run.launch(handle, timeout_s=timeout_s, resume=not fresh)
    except KeyboardInterrupt:
        display({"event": "end"})  # clears a half-drawn progress bar before the one-line account
        where = (f"the training state after epoch {saved['epoch']} is in {saved['path']}" if saved
                 else "no epoch had finished")
        raise Interrupted(f"{where}; to continue from there, run the same command again (without --fresh)") from None
    result.setdefault("wall_s", round(time.time() - began, 3))
    record = run_record(result, run.spec, dataset, run.valid_metric, started)
    store.append(record)
    for line in summary_lines(record, run.valid_metric):
        progress(line)
    return record
