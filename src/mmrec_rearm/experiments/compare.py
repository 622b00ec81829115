"""``compare``: run models side by side through MMRec, resumably, and write the Table 2 report.

One subprocess per (model, configuration, seed) runs MMRec's own ``quick_start`` (see
:mod:`.runner`); every finished run is appended to ``<results>/<dataset>/runs.jsonl`` as soon as
it finishes (:mod:`.runqueue`; ``jobs`` runs at once, :mod:`.parallel`), so rerunning the same
command after an interruption only runs what is missing. With ``from_tune`` each model runs its
best tuning trial's configuration (:mod:`.tune_report`) instead of its MMRec grid.
Configurations are chosen on validation (:mod:`.stats`), results rendered by :mod:`.tables`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ..atomic import write_text
from .mmrec_config import check_model, mmrec_src
from .parallel import make_slots
from .plan import Plan, build_plan, seed_list
from .prepare import (check_features, check_python, ensure_dataset, git_commit, prepare_user_graph, prepared_store,
                      user_path)
from .runqueue import Progress, QueuedRun, RunFunction, make_start, run_queue
from .stats import ModelSummary, PairedComparison, capped_note, comparisons, summarise
from .tables import comparisons_csv, report_markdown, table2_csv, table2_markdown
from .user_graph import DEFAULT_NEIGHBOURS

PathLike = Union[str, "os.PathLike[str]"]


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


def compare(mmrec_dir: PathLike, dataset: str, models: Sequence[str], seeds: Union[int, Sequence[int]] = 1,
            epochs: Optional[int] = None, overrides: Sequence[str] = (), results_dir: PathLike = "results",
            python: str = sys.executable, *, data_dir: Optional[PathLike] = None, target: Optional[str] = "REARM",
            execute: bool = True, retry_failed: bool = True, timeout_s: Optional[float] = None,
            save_model: bool = False, user_graph_k: int = DEFAULT_NEIGHBOURS, jobs: Optional[int] = None,
            devices: Union[str, Sequence[str], None] = None, from_tune: Optional[Mapping[str, str]] = None,
            tune_storage: Optional[str] = None, progress: Optional[Progress] = print,
            run_fn: Optional[RunFunction] = None) -> CompareReport:
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
    jobs / devices: runs at once and where (:func:`.parallel.make_slots`; results as sequential).
    from_tune: model -> Optuna study name (empty mapping or ``{}``: the default names); those
    models run only their best trial's configuration (:mod:`.tune`), from ``tune_storage``
    (default: the study file under ``<results_dir>/<dataset>/``).
    run_fn: replaces the subprocess launch (tests).

    Writes ``table2.md``, ``table2.csv`` and (with a target) ``significance.csv``; returns a
    :class:`CompareReport`.
    """
    say: Progress = progress or (lambda _message: None)
    src = mmrec_src(mmrec_dir)
    models = list(models)
    for model in models:
        check_model(src, model)
    if run_fn is None and execute:
        check_python(python)
    seed_values = seed_list(seeds)
    # the runs start in MMRec's src/: every path the user gave is made absolute here, in their folder
    results_dir = user_path(results_dir)
    results_root = results_dir / dataset
    store = prepared_store(results_dir, dataset, progress)
    folder, extra = ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
                                   results_root, write_yaml=execute, progress=say)
    slots = make_slots(jobs, devices)
    tuned, tuned_notes = [], []
    if from_tune is not None:
        from .tune_report import winner_overrides  # needs optuna: only imported when asked for

        tuned, tuned_notes = winner_overrides(src, results_dir, dataset, models, from_tune, tune_storage,
                                              overrides)
        for note in tuned_notes:
            say(note)
    plan = build_plan(src, dataset, models, seed_values, epochs, overrides, extra_overrides=tuned)
    for warning in plan.warnings:
        say(f"warning: {warning}")
    if execute and run_fn is None:
        for model in models:  # before the first run: a model without its features fails every run
            check_features(src, dataset, folder, model, plan.configs[model][0] if plan.configs[model] else {})
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
            queue, dataset, store, latest, say, execute=execute, retry_failed=retry_failed, slots=slots,
            start=make_start(src, python, results_root, extra, save_model=save_model,
                             timeout_s=timeout_s, run_fn=run_fn))

    records = [latest[s.key] for s in plan.runs if s.key in latest]
    summaries = summarise(records, plan.valid_metric, models)
    target_model = target if target in models else None
    rows = comparisons(summaries, target_model) if target_model else []
    commit = git_commit(src.parent)
    settings = (f"MMRec checkout `{src.parent}`{f' at {commit}' if commit else ''}; seeds {seed_values}; "
                f"epochs {epochs if epochs is not None else 'from the YAML files'} (early stopping as configured); "
                f"overrides {list(overrides) or 'none'}; "
                + (f"tuned configurations: {'; '.join(n.lstrip('- ') for n in tuned_notes)}; " if tuned_notes else "")
                + f"configuration chosen per model on validation "
                f"{', '.join(sorted(set(plan.valid_metric.values())))} (mean over seeds); "
                f"{len(records)} of {len(plan.runs)} planned runs have a record.")
    files = {"table2.md": results_root / "table2.md", "table2.csv": results_root / "table2.csv"}
    write_text(files["table2.md"], report_markdown(dataset, summaries, models, rows, target_model, settings),
               what="Table 2")
    write_text(files["table2.csv"], table2_csv(dataset, summaries, models, target_model), what="Table 2")
    if rows:
        files["significance.csv"] = results_root / "significance.csv"
        write_text(files["significance.csv"], comparisons_csv(rows), what="the significance tests")
    for model in models:
        note = capped_note(summaries[model])
        if note:
            say(f"warning: {model}: {note}")
    say("")
    say(table2_markdown(dataset, summaries, models, target_model).rstrip())
    say(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return CompareReport(dataset, plan, summaries, rows, executed, skipped, failed, files)
