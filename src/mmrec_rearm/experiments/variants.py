"""One model under several named variants (Table 3's ablations, Fig. 4's single modalities, Fig. 3's
parameter values), run through the same machinery as :func:`~.compare.compare`.

A variant is a set of settings pinned on top of the user's ``--set`` items, e.g. ``ablation:
wo_uu``. Each variant becomes an ordinary :mod:`.plan` (MMRec's grid of the model, seeds, epochs),
so its runs have the same keys, subprocesses (:mod:`.launch`), records and store
(``<results>/<dataset>/runs.jsonl``) as a comparison: a run finished by ``compare`` is not run
again by ``ablate`` and the other way round (the full model, with no variant setting, is the same
run in both), and an interrupted sweep resumes. Within each variant the configuration is chosen
on validation only (:func:`.stats.summarise`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError
from .mmrec_config import check_model, mmrec_src
from .parallel import make_slots
from .plan import Plan, RunSpec, build_plan, parse_overrides, seed_list
from .prepare import ensure_dataset, git_commit, prepared_store, user_path
from .runqueue import Progress, QueuedRun, RunFunction, make_start, run_queue
from .stats import ModelSummary, capped_note, summarise

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Variant:
    """``name``: a stable identifier (``wo_uu``); ``label``: the row name in tables (``w/o uu``);
    ``settings``: (key, value) pairs pinned for this variant (empty: the model as configured)."""
    name: str
    label: str
    settings: Tuple[Tuple[str, Any], ...] = ()

    def overrides(self, model: str) -> List[str]:
        """The variant as ``--set`` items (JSON text is valid YAML for every scalar and list)."""
        return [f"{model}.{key}={json.dumps(value)}" for key, value in self.settings]


@dataclass
class VariantRuns:
    dataset: str
    model: str
    variants: List[Variant]
    plans: Dict[str, Plan]                 # variant name -> its plan
    summaries: Dict[str, ModelSummary]     # variant name -> runs grouped, configuration chosen on validation
    executed: int
    skipped: int
    failed: int
    settings: str                          # one paragraph for the reports

    def by_label(self) -> Dict[str, ModelSummary]:
        return {v.label: self.summaries[v.name] for v in self.variants}


def _check_variants(variants: Sequence[Variant], model: str, overrides: Sequence[str]) -> None:
    if not variants:
        raise ConfigError("variants: name at least one variant to run.")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variants: {names} names a variant twice.")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"variants: the labels {labels} repeat; each row needs its own label.")
    pinned = {key for v in variants for key, _ in v.settings}
    for item in parse_overrides(overrides, [model]):
        if item.key in pinned and item.model in (None, model):
            raise ConfigError(f"--set {item.text}: '{item.key}' is what the variants change; "
                              "leave it out of --set.")


def run_variants(mmrec_dir: PathLike, dataset: str, variants: Sequence[Variant],
                 seeds: Union[int, Sequence[int]] = 1, epochs: Optional[int] = None,
                 overrides: Sequence[str] = (), results_dir: PathLike = "results", python: str = sys.executable,
                 *, model: str = "REARM", data_dir: Optional[PathLike] = None, execute: bool = True,
                 retry_failed: bool = True, timeout_s: Optional[float] = None, jobs: Optional[int] = None,
                 devices: Union[str, Sequence[str], None] = None, progress: Optional[Progress] = print,
                 run_fn: Optional[RunFunction] = None) -> VariantRuns:
    """Run every (variant, configuration, seed) of ``model`` on ``dataset`` that has no ``ok`` record.

    Arguments as in :func:`~.compare.compare`; ``variants`` in table order. A run shared by two
    variants (identical settings) runs once. Returns the per-variant summaries; writes no table.
    """
    say: Progress = progress or (lambda _message: None)
    src = mmrec_src(mmrec_dir)
    check_model(src, model)
    variants = list(variants)
    _check_variants(variants, model, overrides)
    slots = make_slots(jobs, devices)
    if run_fn is None and execute and shutil.which(python) is None and not Path(python).is_file():
        raise ConfigError(f"python={python!r}: interpreter not found; give the Python that has MMRec's requirements.")
    seed_values = seed_list(seeds)
    results_dir = user_path(results_dir)  # the runs start in MMRec's src/
    results_root = results_dir / dataset
    store = prepared_store(results_dir, dataset, progress)
    _folder, extra = ensure_dataset(src, dataset, user_path(data_dir) if data_dir is not None else None,
                                    results_root, write_yaml=execute, progress=say)
    plans: Dict[str, Plan] = {}
    for variant in variants:
        plans[variant.name] = build_plan(src, dataset, [model], seed_values, epochs,
                                         list(overrides) + variant.overrides(model))
    for warning in dict.fromkeys(w for p in plans.values() for w in p.warnings):
        say(f"warning: {warning}")
    queue: List[Tuple[Variant, RunSpec]] = []
    seen = set()
    for variant in variants:
        for spec in plans[variant.name].runs:
            if spec.key not in seen:
                seen.add(spec.key)
                queue.append((variant, spec))

    with store.exclusive():
        latest = store.latest()
        total = len(queue)
        done = sum(1 for _, s in queue if latest.get(s.key, {}).get("status") == "ok")
        say(f"{dataset}: {total} {model} runs planned ({len(variants)} variant(s) x {len(seed_values)} seed(s)); "
            f"{done} already finished in {store.path}")
        executed, skipped, failed = run_queue(
            [QueuedRun(f"{model} [{variant.label}] seed {spec.seed}", spec, plans[variant.name].valid_metric[model])
             for variant, spec in queue],
            dataset, store, latest, say, execute=execute, retry_failed=retry_failed, slots=slots,
            start=make_start(src, python, results_root, extra, timeout_s=timeout_s, run_fn=run_fn))

    summaries: Dict[str, ModelSummary] = {}
    for variant in variants:
        plan = plans[variant.name]
        records = [latest[s.key] for s in plan.runs if s.key in latest]
        summaries[variant.name] = summarise(records, plan.valid_metric, [model])[model]
        note = capped_note(summaries[variant.name])
        if note:
            say(f"warning: {model} [{variant.label}]: {note}")
    commit = git_commit(src.parent)
    finished = sum(1 for _, s in queue if s.key in latest)
    settings = (f"MMRec checkout `{src.parent}`{f' at {commit}' if commit else ''}; model {model}; "
                f"seeds {seed_values}; epochs {epochs if epochs is not None else 'from the YAML files'} "
                f"(early stopping as configured); overrides {list(overrides) or 'none'}; configuration chosen "
                f"per variant on validation {', '.join(sorted({p.valid_metric[model] for p in plans.values()}))} "
                f"(mean over seeds); {finished} of {total} planned runs have a record.")
    return VariantRuns(dataset, model, variants, plans, summaries, executed, skipped, failed, settings)
