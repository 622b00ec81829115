"""``tune``: an Optuna study over one model's configuration, chosen on MMRec's validation metric only.

Each trial is one MMRec run (one seed, ``epochs``) through the runner, store and slots that
``compare`` uses, so a trial's run is also a record in ``<results>/<dataset>/runs.jsonl`` under the
key ``compare`` gives the same configuration: nothing is run twice, and ``compare --from-tune``
finds the winner's run already done. How the work is split and kept:

* **Objective**: the trial's best validation value of MMRec's ``valid_metric`` (the record's
  ``valid`` dict). Test values are never read here: they are not in the objective, the pruner,
  the summary, nor the choice of the winner.
* **Pruning**: every epoch's validation score (the runner's ``epoch`` events) is reported to
  Optuna's pruner; a trial it prunes is stopped through the run machinery (:class:`~.launch.StopRun`:
  the subprocess is ended, its log closed, its training state kept) and recorded as ``pruned``. Should
  the pruner let the same configuration go on later, its run continues from that state. A run that
  has trained its last epoch is never pruned: it is complete, and stopping it would only lose its
  test values.
* **Storage**: by default an Optuna journal file, ``<results>/<dataset>/optuna.journal``: no
  server, safe for several processes on one machine and on a shared (NFS) filesystem. A URL
  (``postgresql://...``, ``sqlite:///...``) uses Optuna's database storage, with heartbeats, so
  a trial of a worker that died is failed and tried again by the others.
* **Parallelism**: ``jobs`` trials at once in this process (Optuna's ``n_jobs`` threads, each trial
  in a :mod:`.parallel` slot: its share of the threads or its own GPU); more workers, on this or
  other machines, run the same command against the same storage and study.
* **Budget**: the study stops once ``trials`` trials are complete or pruned (Optuna's
  ``MaxTrialsCallback``; trials already running then finish). Rerunning the command continues the
  study; a trial interrupted by Ctrl-C is queued again with the same values.
"""
from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import List, Optional, Sequence, Union

from ..errors import ConfigError, Interrupted, RunsAbortedError
from .launch import StopRun
from .mmrec_config import check_model, mmrec_src
from .parallel import Slot, make_slots, run_threads
from .plan import FIRST_SEED, RunSpec, canonical_json
from .prepare import ensure_dataset, prepare_user_graph, prepared_store, user_path
from .progress import ProgressDisplay
from .runqueue import CrashWatch, Progress, RunFunction, format_config, make_start
from .store import RunStore, now, run_record
from .tune_report import (SETTINGS_ATTR, STORAGE_FILE, TuneReport, default_study_name, open_storage, require_optuna,
                          study_report, summary_line, write_summary)
from .tune_space import SearchSpace, build_space
from .user_graph import DEFAULT_NEIGHBOURS

PathLike = Union[str, "os.PathLike[str]"]
PRUNERS = ("median", "hyperband", "none")
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class RunFailed(Exception):
    """A trial's run crashed or produced no validation value (the trial is FAIL, the study goes on)."""


class _Interrupted(Exception):
    """The trial's run was killed by an interrupt of this process (no record; queued again)."""


def make_pruner(name: str, warmup_epochs: int, startup_trials: int, epochs: Optional[int]):
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs), max_resource=epochs or "auto")
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: expected one of {list(PRUNERS)}.")


def _check_settings(study, settings: dict, name: str, storage: str) -> None:
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    differ = [k for k in sorted(set(stored) | set(settings)) if canonical_json(stored.get(k)) != canonical_json(settings.get(k))]
    if differ:
        raise ConfigError(
            f"study '{name}' in {storage} was made with other settings ({', '.join(f'{k}: {stored.get(k)!r}' for k in differ)}"
            f"; now {', '.join(f'{k}: {settings.get(k)!r}' for k in differ)}); its trials would not be comparable. "
            "Use the same settings, or a new study name (--study NAME).")


def fail_dead_local_trials(study, say: Progress) -> int:
    """Fail the RUNNING trials of workers on this host whose process is gone (a killed job on a
    journal storage, which has no heartbeats) and queue their values again; -> how many."""
    optuna = require_optuna()
    host = socket.gethostname()
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        say(f"trial {trial.number}: its worker (pid {pid}) is gone; failed it and queued its values again")
        count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_epoch(spec: RunSpec, base: dict) -> Optional[int]:
    """The index of the run's last epoch (``--epochs``, else ``epochs`` of the trial's configuration,
    else of MMRec's merged YAML files ``base``); None when that is not a positive integer."""
    total = spec.epochs if spec.epochs is not None else spec.config.get("epochs", base.get("epochs"))
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        return None
    return total - 1


class _Objective:
    """One trial = one run of the sampled configuration, in a free slot (module docstring)."""

    def __init__(self, space: SearchSpace, dataset: str, seed: int, epochs: Optional[int], metric: str,
                 store: RunStore, slots: Sequence[Slot], start, say: Progress, study_name: str, max_failures: int):
        self.space, self.dataset, self.seed, self.epochs, self.metric = space, dataset, seed, epochs, metric
        self.store, self.start, self.study_name, self.max_failures = store, start, study_name, max_failures
        self.free: "queue.Queue[Slot]" = queue.Queue()
        for slot in slots:
            self.free.put(slot)
        self.lock = threading.Lock()
        self._say = say
        self.crashes = CrashWatch()
        self.abort: Optional[RunsAbortedError] = None
        self.interrupted = threading.Event()
        self.executed = self.failures = 0

    def say(self, message: str) -> None:
        with self.lock:
            self._say(message)

    def __call__(self, trial) -> float:
        optuna = require_optuna()
        if self.interrupted.is_set():  # asked for between the interrupt and the end of the loop
            raise _Interrupted()
        values = {name: param.suggest(trial) for name, param in self.space.params.items()}
        config = self.space.config(values)
        spec = RunSpec(self.dataset, self.space.model, config, self.seed, self.epochs)
        for key, value in (("config", config), ("run_key", spec.key), ("worker", WORKER)):
            trial.set_user_attr(key, value)
        reported: set = set()
        with self.store.run_lock(spec.key):
            previous = self.store.latest().get(spec.key)
            if previous is not None:
                reused = self._replay(trial, previous, reported)
                if reused is not None:
                    return reused
            slot = self.free.get()
            try:
                return self._run(trial, spec, values, slot, reported, optuna)
            finally:
                self.free.put(slot)

    def _replay(self, trial, record: dict, reported: set) -> Optional[float]:
        """Feed an earlier record of the same run to the pruner: its value when it finished, a
        prune when the pruner stops it now; None when it must run (an earlier crash or prune)."""
        optuna = require_optuna()
        for entry in record.get("history") or []:
            score, step = entry.get("valid_score"), entry.get("epoch")
            if score is None or step is None or step in reported:
                continue
            trial.report(float(score), int(step))
            reported.add(step)
            if record.get("status") != "ok" and trial.should_prune():
                self.say(f"trial {trial.number}: pruned at epoch {step} from the record of run {record['key']}")
                raise optuna.TrialPruned(f"pruned at epoch {step} (stored run {record['key']})")
        if record.get("status") == "ok":
            value = (record.get("valid") or {}).get(self.metric)
            if value is not None:
                self.say(f"trial {trial.number}: run {record['key']} already finished: valid {self.metric} {value}")
                return float(value)
        return None

    def _run(self, trial, spec: RunSpec, values: dict, slot: Slot, reported: set, optuna) -> float:
        label = f"trial {trial.number}"
        self.say(f"{label}{f' [{slot.label}]' if slot.label else ''}: {format_config(values)}")
        printer = ProgressDisplay(lambda message: self.say(f"[{label}] {message.strip()}"), bar=False)
        history: List[dict] = []
        last = _last_epoch(spec, self.space.base)

        def on_event(event: dict) -> None:
            printer(event)
            if event.get("event") != "epoch" or event.get("valid_score") is None:
                return
            step, score = int(event["epoch"]), float(event["valid_score"])
            history.append({"epoch": step, "valid_score": score})
            if step not in reported:
                trial.report(score, step)
                reported.add(step)
            if last is not None and step >= last:
                return  # the run has trained its last epoch: stopping it now would only lose its test values
            if trial.should_prune():
                raise StopRun(f"pruned at epoch {step}: valid {self.metric} {score:.4f}")

        started, began = now(), time.time()
        with self.lock:
            self.executed += 1
        result = self.start(spec, on_event, slot)
        if result.get("status") == "stopped" and not self.interrupted.is_set():
            message = str(result.get("message"))
            self._record(trial, spec, {**result, "status": "pruned", "history": history,
                                       "epochs_run": len(history), "wall_s": round(time.time() - began, 3)},
                         started)
            self.say(f"[{label}] {message}")
            raise optuna.TrialPruned(message)
        if self.interrupted.is_set():  # killed with the others: no record, the same values again next time
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise _Interrupted()
        record = self._record(trial, spec, result, started)
        value = (record.get("valid") or {}).get(self.metric) if record["status"] == "ok" else None
        if value is not None:
            self.say(f"[{label}] done in {record.get('wall_s', 0):.1f} s: best epoch {record.get('best_epoch')}, "
                     f"valid {self.metric} {value}")
            return float(value)
        self.say(f"[{label}] FAILED: {record.get('message')} (log: {record.get('log_path')})")
        with self.lock:
            self.failures += 1
            if self.crashes.add(record) and self.abort is None:
                self.abort = self.crashes.error(record, None, self.store.path)
            elif self.failures > self.max_failures and self.abort is None:
                self.abort = RunsAbortedError(
                    f"stopped: {self.failures} trials failed, more than the {self.max_failures} trials asked for; "
                    f"last error: {record.get('message')} (log: {record.get('log_path')}).")
            stop = self.abort is not None
        if stop:
            trial.study.stop()
        raise RunFailed(record.get("message") or f"no valid {self.metric} in the result")

    def _record(self, trial, spec: RunSpec, result: dict, started: str) -> dict:
        record = run_record(result, spec, self.dataset, self.metric, started)
        record["tune"] = {"study": self.study_name, "trial": trial.number}
        self.store.append(record)
        return record


def tune(mmrec_dir: PathLike, dataset: str, model: str, trials: int, *, epochs: Optional[int] = None,
         space_file: Optional[PathLike] = None, storage: Optional[str] = None, jobs: Optional[int] = None,
         devices: Union[str, Sequence[str], None] = None, study_name: Optional[str] = None, seed: int = FIRST_SEED,
         sampler_seed: Optional[int] = None, pruner: str = "median", warmup_epochs: int = 1,
         startup_trials: int = 3, overrides: Sequence[str] = (), results_dir: PathLike = "results",
         python: str = sys.executable, data_dir: Optional[PathLike] = None, timeout_s: Optional[float] = None,
         summary: bool = True, execute: bool = True, progress: Optional[Progress] = print,
         run_fn: Optional[RunFunction] = None) -> TuneReport:
    """Tune ``model`` on ``dataset`` until its study has ``trials`` complete or pruned trials.

    Arguments as in :func:`~.compare.compare` where they share a name; ``space_file``: YAML of
    ranges (:mod:`.tune_space`); ``storage``: URL or journal file (default under
    ``<results_dir>/<dataset>/``); ``study_name`` default ``<dataset>.<model>``; ``seed``: MMRec's
    seed of every trial; ``sampler_seed``: TPE's seed (give each worker its own); ``pruner``:
    median | hyperband | none, pruning from epoch ``warmup_epochs`` on, after ``startup_trials``
    finished trials (median). Writes the study summary (:mod:`.tune_report`) unless ``summary=False``.
    ``execute=False`` prints the study, the space and the slots, and writes nothing (no optuna needed).
    """
    say: Progress = progress or (lambda _message: None)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r}: expected a positive number of trials.")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"--epochs {epochs!r}: expected a positive integer.")
    src = mmrec_src(mmrec_dir)
    check_model(src, model)
    results_dir = user_path(results_dir)
    results_root = results_dir / dataset
    space = build_space(src, model, dataset, overrides, user_path(space_file) if space_file else None)
    for warning in space.warnings:
        say(f"warning: {warning}")
    metric = str(space.base.get("valid_metric") or "Recall@20").lower()
    slots = make_slots(jobs, devices)
    name = study_name or default_study_name(dataset, model)
    heading = (f"{model} on {dataset}, objective valid {metric} (maximised), {len(slots)} trial(s) at once, "
               f"seed {seed}, epochs {epochs or 'from the YAML files'}")
    if not execute:
        say(f"study '{name}' in {storage or results_root / STORAGE_FILE} (not opened, execute=False): {heading}")
        for param in space.params.values():
            say(f"  {param.describe()}")
        return TuneReport(name, str(storage or results_root / STORAGE_FILE), {}, None, metric)
    optuna = require_optuna()
    storage_obj, storage_label = open_storage(storage, results_root)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=min(10, max(1, trials // 2)))
    study = optuna.create_study(storage=storage_obj, study_name=name, direction="maximize", sampler=sampler,
                                pruner=make_pruner(pruner, warmup_epochs, startup_trials, epochs),
                                load_if_exists=True)
    _check_settings(study, {"dataset": dataset, "model": model, "epochs": epochs, "seed": seed, "metric": metric,
                            "space": space.signature(), "overrides": list(overrides)}, name, storage_label)
    store = prepared_store(results_dir, dataset, progress)
    with store.run_lock("setup"):  # workers starting together write the dataset YAML / user graph once
        folder, extra = ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
                                       results_root, write_yaml=True, progress=say)
        extra.update(prepare_user_graph(src, folder, dataset, [model], DEFAULT_NEIGHBOURS, say))
    fail_dead_local_trials(study, say)
    say(f"study '{name}' in {storage_label}: {heading}")
    for param in space.params.values():
        say(f"  {param.describe()}")
    objective = _Objective(space, dataset, seed, epochs, metric, store, slots,
                           make_start(src, python, results_root, extra, timeout_s=timeout_s, run_fn=run_fn),
                           say, name, max_failures=trials)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=done_states)) < trials:
        _optimize(study, objective, trials, done_states, slots, optuna)
    if objective.abort is not None:
        raise objective.abort
    report = study_report(study, name, storage_label, metric)
    report.executed = objective.executed
    if summary:
        report.files = write_summary(study, results_root / "tune", metric=metric, storage=storage_label,
                                     space=space, settings=study.user_attrs.get(SETTINGS_ATTR, {}))
    say(summary_line(report))
    for path in report.files.values():
        say(f"wrote {path}")
    return report


def _optimize(study, objective: _Objective, trials: int, done_states, slots: Sequence[Slot], optuna) -> None:
    """``study.optimize`` with ``len(slots)`` threads, run from a helper thread so that Ctrl-C (or
    SIGTERM) here can kill the trials' subprocesses first (they then leave no record and are
    queued again)."""
    errors: List[BaseException] = []

    def work() -> None:
        try:
            study.optimize(objective, n_jobs=len(slots), catch=(RunFailed,), gc_after_trial=False,
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=done_states)])
        except _Interrupted:
            pass
        except BaseException as exc:  # a bug or a storage error: re-raised in the caller's thread
            errors.append(exc)

    def interrupt() -> None:
        objective.interrupted.set()
        slots[0].running.kill_all()

    try:
        run_threads([work], interrupt, "tune-optimize")
    except KeyboardInterrupt:
        done = len(study.get_trials(deepcopy=False, states=done_states))
        raise Interrupted(
            f"the trials in flight were stopped and not recorded (their values are queued again); {done} of {trials} "
            f"trials of study '{study.study_name}' are done; rerun the same command to go on.") from None
    if errors:
        raise errors[0]
