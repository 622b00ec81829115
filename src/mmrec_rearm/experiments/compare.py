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
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..atomic import check_writable, write_text
from ..errors import ConfigError, DatasetError
from .datasets import detect_feature_files, write_dataset_yaml
from .mmrec_config import (check_model, dataset_folder, dataset_yaml_path, merged_config, mmrec_src,
                           uses_user_graph)
from .parallel import make_slots
from .plan import Plan, build_plan, seed_list
from .runqueue import (MAX_IDENTICAL_CRASHES, Progress, QueuedRun, RunFunction, make_start,  # noqa: F401
                       run_queue)
from .stats import ModelSummary, PairedComparison, comparisons, summarise
from .store import RunStore
from .tables import comparisons_csv, report_markdown, table2_csv, table2_markdown
from .user_graph import DEFAULT_NEIGHBOURS, make_user_graph_dict

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


def _git_commit(folder: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def stage_dataset(data_dir: Path, staging_root: Path, dataset: str) -> Path:
    """``<staging_root>/<dataset>/`` with a symbolic link to every entry of ``data_dir``.

    MMRec models write caches (``mm_adj_*.pt``) and DRAGON needs ``user_graph_dict.npy`` in the
    dataset folder; staging keeps those out of a shared or read-only data folder. Hidden entries
    (``.rearm_cache`` of an earlier direct run, ``.mmrec-rearm``) are not linked: a link would send
    the writes of the staged runs back into the source folder.
    """
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found; pass the folder holding the .inter file.")
    staged = staging_root / dataset
    staged.mkdir(parents=True, exist_ok=True)
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        link = staged / entry.name
        if link.is_symlink() and os.path.realpath(link) == str(entry.resolve()):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            continue  # a folder of the same name made earlier: leave it alone
        try:
            link.symlink_to(entry.resolve())
        except OSError:  # file systems without symbolic links
            if entry.is_file():
                shutil.copy2(entry, link)
    return staged


def prepared_store(results_dir: Path, dataset: str, progress: Optional[Progress]) -> RunStore:
    """The results store of ``dataset``, its folder checked writable before any run starts (a run
    whose record cannot be written would be lost). Unusable records are reported through
    ``progress`` as ``warning: ...`` lines (``warnings.warn`` when None)."""
    check_writable(results_dir / dataset, what="run records and tables")
    report = (lambda line: progress(f"warning: {line}")) if progress else None
    return RunStore(results_dir, dataset, report=report)


def user_path(path: PathLike) -> Path:
    """``path`` made absolute against the current working directory (the user's, not MMRec's
    ``src/`` where the runs start); ``~`` is expanded and symbolic links are kept as given."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _ensure_dataset(src: Path, dataset: str, data_dir: Optional[Path], results_root: Path,
                    write_yaml: bool, progress: Progress) -> tuple:
    """(dataset folder as MMRec will see it, extra unhashed config for every run)."""
    extra: Dict[str, Any] = {}
    if data_dir is not None:
        staged = stage_dataset(data_dir, results_root / "data", dataset)
        extra["data_path"] = str(staged.parent) + os.sep
    base = merged_config(src, "__none__", dataset)
    folder = dataset_folder(src, {"data_path": extra.get("data_path") or base.get("data_path")}, dataset)
    if not dataset_yaml_path(src, dataset).is_file():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder not found and MMRec has no "
                               f"{dataset_yaml_path(src, dataset)}; pass data_dir= (--data-dir) or put the "
                               "data where MMRec's data_path points.")
        if write_yaml:
            vision, text, note = detect_feature_files(folder)
            path = write_dataset_yaml(src, dataset, vision_feature_file=vision, text_feature_file=text, note=note)
            progress(f"wrote {path} (marked as ours){': ' + note if note else ''}")
    return folder, extra


def _prepare_user_graph(src: Path, folder: Path, dataset: str, models: Sequence[str], k: int,
                        progress: Progress) -> Dict[str, Any]:
    """Build the user graph file DRAGON/DualGNN read, if missing -> extra config for every run.

    MMRec's own dataset YAMLs name the file (``user_graph_dict_file``); a YAML without the key
    makes those models fail on ``os.path.join(..., None)``, so the key is then passed to the runs."""
    needing = [m for m in models if uses_user_graph(src, m)]
    if not needing:
        return {}
    config = merged_config(src, needing[0], dataset)
    extra: Dict[str, Any] = {}
    name = config.get("user_graph_dict_file")
    if not name:
        name = "user_graph_dict.npy"
        extra["user_graph_dict_file"] = name
        progress(f"{dataset_yaml_path(src, dataset)} has no user_graph_dict_file, which "
                 f"{', '.join(needing)} read; passing user_graph_dict_file={name} to the runs")
    name = str(name)
    target = folder / name
    if target.exists():
        return extra
    if not os.access(folder, os.W_OK):
        raise DatasetError(f"{folder}: {', '.join(needing)} need {name} here but the folder is read-only; "
                           "pass data_dir= (--data-dir) to work on a staged copy.")
    started = time.time()
    make_user_graph_dict(folder, k=k, inter_file=str(config.get("inter_file_name") or f"{dataset}.inter"),
                         file_name=name)
    progress(f"built {target} for {', '.join(needing)} in {time.time() - started:.1f} s")
    return extra


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
    if run_fn is None and execute and shutil.which(python) is None and not Path(python).is_file():
        raise ConfigError(f"python={python!r}: interpreter not found; give the Python that has MMRec's requirements.")
    seed_values = seed_list(seeds)
    # the runs start in MMRec's src/: every path the user gave is made absolute here, in their folder
    results_dir = user_path(results_dir)
    results_root = results_dir / dataset
    store = prepared_store(results_dir, dataset, progress)
    folder, extra = _ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
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
    with store.exclusive():
        if execute:
            extra.update(_prepare_user_graph(src, folder, dataset, models, user_graph_k, say))
        latest = store.latest()
        total = len(plan.runs)
        done = sum(1 for s in plan.runs if latest.get(s.key, {}).get("status") == "ok")
        say(f"{dataset}: {total} runs planned ({', '.join(f'{m}: {len(plan.configs[m])} configuration(s)' for m in models)}"
            f" x {len(seed_values)} seed(s)); {done} already finished in {store.path}")
        queue = [QueuedRun(f"{spec.model} seed {spec.seed}", spec, plan.valid_metric[spec.model])
                 for spec in plan.runs]
        executed, skipped, failed = run_queue(
            queue, dataset, store, latest, say, execute=execute, retry_failed=retry_failed, slots=slots,
            start=make_start(src, python, results_root / "logs", extra, save_model=save_model,
                             timeout_s=timeout_s, run_fn=run_fn))

    records = [latest[s.key] for s in plan.runs if s.key in latest]
    summaries = summarise(records, plan.valid_metric, models)
    target_model = target if target in models else None
    rows = comparisons(summaries, target_model) if target_model else []
    commit = _git_commit(src.parent)
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
    say("")
    say(table2_markdown(dataset, summaries, models, target_model).rstrip())
    say(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return CompareReport(dataset, plan, summaries, rows, executed, skipped, failed, files)
