"""``compare``: run models side by side through MMRec, resumably, and write the Table 2 report.

One subprocess per (model, configuration, seed) runs MMRec's own ``quick_start`` (see
:mod:`.runner`); every finished run is appended to ``<results>/<dataset>/runs.jsonl`` before the
next starts, so rerunning the same command after an interruption only runs what is missing.
Configurations are chosen on validation (:mod:`.stats`), results rendered by :mod:`.tables`.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import ConfigError, RunsAbortedError
from .launch import launch_run
from .mmrec_config import check_model, mmrec_src
from .plan import Plan, RunSpec, build_plan, seed_list
from .prepare import check_features, ensure_dataset, git_commit, prepare_user_graph, user_path
from .progress import ProgressDisplay
from .stats import ModelSummary, PairedComparison, capped_note, comparisons, summarise
from .store import RunStore, now, run_record
from .tables import comparisons_csv, report_markdown, table2_csv, table2_markdown
from .user_graph import DEFAULT_NEIGHBOURS

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[str], None]
#: ``run_fn(spec, extra_config, on_event) -> result dict``; the default launches the runner.
RunFunction = Callable[[RunSpec, Dict[str, Any], Callable[[dict], None]], dict]


@dataclass
class CompareReport:
    dataset: str
    plan: Plan
    summaries: Dict[str, ModelSummary]
    comparisons: List[PairedComparison]
    executed: int
    skipped: int
    failed: int
    files: Dict[str, Path] = field(default_factory=dict)


def _format_config(config: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in config.items()) + "}"


def _result_line(record: dict, metric: str) -> str:
    if record["status"] == "ok":
        valid = (record.get("valid") or {}).get(metric)
        test = (record.get("test") or {}).get(metric)
        return (f"    done in {record.get('wall_s', 0):.1f} s: best epoch {record.get('best_epoch')}, "
                f"valid {metric} {valid}, test {metric} {test}"
                + (f" ({record['message']})" if record.get("message") else ""))
    return f"    FAILED after {record.get('wall_s', 0):.1f} s: {record.get('message')} (log: {record.get('log_path')})"


@dataclass(frozen=True)
class QueuedRun:
    """One run to do: ``label`` heads its progress line ("REARM [w/o uu] seed 999"), ``metric`` is
    its model's validation metric."""
    label: str
    spec: RunSpec
    metric: str


#: A sweep stops when this many runs in a row crash with the same message: a setup problem (a
#: missing file, a broken environment) fails every remaining run the same way.
MAX_IDENTICAL_CRASHES = 3
_VARIABLE_PARTS = re.compile(r"[0-9a-f]{16}|\d+(?:\.\d+)?")


def _crash_signature(record: dict) -> Optional[str]:
    """The message of a crashed run with run keys and numbers blanked, or None when the run did
    not crash (it finished, or ended as a training outcome such as a NaN loss, which has no error)."""
    if record.get("status") == "ok" or not record.get("error"):
        return None
    return _VARIABLE_PARTS.sub("#", str(record.get("message") or ""))


def run_queue(queue: Sequence[QueuedRun], dataset: str, store: RunStore, latest: Dict[str, dict],
              say: Progress, *, execute: bool, retry_failed: bool,
              start: Callable[[RunSpec, Callable[[dict], None]], dict]) -> tuple:
    """Run each queued run that has no ``ok`` record (and, with ``retry_failed=False``, no record at
    all), appending its record to ``store`` before the next starts and updating ``latest`` (key ->
    newest record). ``start(spec, on_event)`` runs one and returns its result dict. Called with the
    store's lock held. -> ``(executed, skipped, failed)`` counts.

    Raises :class:`~mmrec_rearm.errors.RunsAbortedError` after :data:`MAX_IDENTICAL_CRASHES` runs
    in a row crashed with the same message (their records are kept and retried next time)."""
    executed = skipped = failed = 0
    crashes: List[str] = []
    total = len(queue)
    for index, item in enumerate(queue, start=1):
        spec = item.spec
        previous = latest.get(spec.key)
        if previous is not None and (previous.get("status") == "ok" or not retry_failed):
            skipped += 1
            continue
        head = f"run {index} of {total}: {item.label} config {_format_config(spec.config)}"
        if not execute:
            say(head + " - not run (execute=False)")
            continue
        say(head)
        started = now()
        result = start(spec, ProgressDisplay(say, indent="    "))
        record = run_record(result, spec, dataset, item.metric, started)
        store.append(record)
        latest[spec.key] = record
        executed += 1
        failed += record["status"] != "ok"
        say(_result_line(record, item.metric))
        signature = _crash_signature(record)
        if signature is None or (crashes and crashes[-1] != signature):
            crashes = []
        if signature is not None:
            crashes.append(signature)
        if len(crashes) >= MAX_IDENTICAL_CRASHES:
            raise RunsAbortedError(
                f"stopped: {len(crashes)} runs in a row failed with the same error: {record.get('message')} "
                f"(log: {record.get('log_path')}). The remaining {total - index} run(s) were not started; "
                f"fix the cause and rerun the same command (finished runs are kept in {store.path}).")
    return executed, skipped, failed


def compare(mmrec_dir: PathLike, dataset: str, models: Sequence[str], seeds: Union[int, Sequence[int]] = 1,
            epochs: Optional[int] = None, overrides: Sequence[str] = (), results_dir: PathLike = "results",
            python: str = sys.executable, *, data_dir: Optional[PathLike] = None, target: Optional[str] = "REARM",
            execute: bool = True, retry_failed: bool = True, timeout_s: Optional[float] = None,
            save_model: bool = False, user_graph_k: int = DEFAULT_NEIGHBOURS,
            progress: Optional[Progress] = print, run_fn: Optional[RunFunction] = None) -> CompareReport:
    """Run every (model, configuration, seed) of ``models`` on ``dataset`` and report.

    mmrec_dir: MMRec checkout (or its ``src``). models: MMRec model names (case-sensitive).
    seeds: a count N (seeds 999 .. 999+N-1) or explicit seeds. epochs: MMRec's ``epochs`` for
    every run (None keeps the YAML value; early stopping still applies). overrides:
    ``MODEL.key=value`` / ``key=value`` items (see :mod:`.plan`). results_dir: the store and the
    tables go to ``<results_dir>/<dataset>/``. python: the interpreter that runs MMRec.
    data_dir: a dataset folder outside the checkout; it is staged under
    ``<results_dir>/<dataset>/data/`` (symlinks) and MMRec's ``data_path`` is pointed there.
    target: the model tested against the baselines (None: no tests). execute=False plans and
    reports from finished runs only. retry_failed: rerun runs whose last attempt failed.
    run_fn: replaces the subprocess launch (tests).

    Writes ``table2.md``, ``table2.csv`` and (with a target) ``significance.csv``; returns a
    :class:`CompareReport`.
    """
    say: Progress = progress or (lambda _message: None)
    src = mmrec_src(mmrec_dir)
    models = list(models)
    for model in models:
        check_model(src, model)
    if run_fn is None and execute and shutil.which(python) is None and not Path(python).is_file():
        raise ConfigError(f"python={python!r}: interpreter not found; give the Python that has MMRec's requirements.")
    seed_values = seed_list(seeds)
    # the runs start in MMRec's src/: every path the user gave is made absolute here, in their folder
    results_dir = user_path(results_dir)
    results_root = results_dir / dataset
    folder, extra = ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
                                   results_root, write_yaml=execute, progress=say)
    plan = build_plan(src, dataset, models, seed_values, epochs, overrides)
    for warning in plan.warnings:
        say(f"warning: {warning}")
    if execute and run_fn is None:
        for model in models:  # before the first run: a model without its features fails every run
            check_features(src, dataset, folder, model, plan.configs[model][0] if plan.configs[model] else {})
    store = RunStore(results_dir, dataset)
    with store.exclusive():
        if execute:
            extra.update(prepare_user_graph(src, folder, dataset, models, user_graph_k, say))
        latest = store.latest()
        total = len(plan.runs)
        done = sum(1 for s in plan.runs if latest.get(s.key, {}).get("status") == "ok")
        say(f"{dataset}: {total} runs planned ({', '.join(f'{m}: {len(plan.configs[m])} configuration(s)' for m in models)}"
            f" x {len(seed_values)} seed(s)); {done} already finished in {store.path}")
        queue = [QueuedRun(f"{spec.model} seed {spec.seed}", spec, plan.valid_metric[spec.model])
                 for spec in plan.runs]
        executed, skipped, failed = run_queue(
            queue, dataset, store, latest, say, execute=execute, retry_failed=retry_failed,
            start=lambda spec, on_event: (
                launch_run(spec, src, python, results_root, extra=extra, save_model=save_model,
                           on_event=on_event, timeout_s=timeout_s)
                if run_fn is None else run_fn(spec, extra, on_event)))

    records = [latest[s.key] for s in plan.runs if s.key in latest]
    summaries = summarise(records, plan.valid_metric, models)
    target_model = target if target in models else None
    rows = comparisons(summaries, target_model) if target_model else []
    commit = git_commit(src.parent)
    settings = (f"MMRec checkout `{src.parent}`{f' at {commit}' if commit else ''}; seeds {seed_values}; "
                f"epochs {epochs if epochs is not None else 'from the YAML files'} (early stopping as configured); "
                f"overrides {list(overrides) or 'none'}; configuration chosen per model on validation "
                f"{', '.join(sorted(set(plan.valid_metric.values())))} (mean over seeds); "
                f"{len(records)} of {len(plan.runs)} planned runs have a record.")
    results_root.mkdir(parents=True, exist_ok=True)
    files = {"table2.md": results_root / "table2.md", "table2.csv": results_root / "table2.csv"}
    files["table2.md"].write_text(report_markdown(dataset, summaries, models, rows, target_model, settings),
                                  encoding="utf-8")
    files["table2.csv"].write_text(table2_csv(dataset, summaries, models, target_model), encoding="utf-8")
    if rows:
        files["significance.csv"] = results_root / "significance.csv"
        files["significance.csv"].write_text(comparisons_csv(rows), encoding="utf-8")
    for model in models:
        note = capped_note(summaries[model])
        if note:
            say(f"warning: {model}: {note}")
    say("")
    say(table2_markdown(dataset, summaries, models, target_model).rstrip())
    say(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return CompareReport(dataset, plan, summaries, rows, executed, skipped, failed, files)
