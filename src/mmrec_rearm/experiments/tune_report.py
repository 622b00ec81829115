"""Reading an Optuna study of ``tune``: its storage, trial counts, best trial (on validation only),
the summary written as Markdown and PNG, and the winners ``compare --from-tune`` runs.

Nothing here reads a test metric: the summary shows validation values, Optuna's parameter
importances (fANOVA over the validation values) and the optimisation history; test numbers
appear only in ``compare``'s table, for the configuration validation chose.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..atomic import write_text
from ..errors import ConfigError
from ..hints import command
from .mmrec_config import grid_keys, merged_config
from .plan import Override
from .prepare import user_path
from .runqueue import format_config
from .tune_space import decoded

STORAGE_FILE = "optuna.journal"
#: study user attribute holding what the trials must share (a second call with other settings is refused)
SETTINGS_ATTR = "mmrec_rearm"


@dataclass
class TuneReport:
    study: str
    storage: str
    counts: Dict[str, int]                  # state name -> trials in the study
    best: Optional[dict]                    # number, value, params, config, run_key
    metric: str
    executed: int = 0                       # runs started by this call
    files: Dict[str, Path] = field(default_factory=dict)


def require_optuna():
    """The optuna module, or a :class:`ConfigError` saying how to install it."""
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError("tune needs the optional package optuna: pip install 'mmrec-rearm[tune]' "
                          f"(into {sys.executable}).") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_study_name(dataset: str, model: str) -> str:
    return f"{dataset}.{model}"


def open_storage(storage: Optional[str], results_root: Path) -> Tuple[Any, str]:
    """(Optuna storage, how to name it): a URL -> database storage with heartbeats; a path, or
    None (``<results_root>/optuna.journal``) -> journal file storage."""
    optuna = require_optuna()
    if storage and "://" in storage:
        from optuna.storages import RDBStorage, RetryFailedTrialCallback

        return RDBStorage(storage, heartbeat_interval=60, grace_period=300,
                          failed_trial_callback=RetryFailedTrialCallback(max_retry=2)), storage
    path = user_path(storage) if storage else results_root / STORAGE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)


def study_report(study, name: str, storage: str, metric: str) -> TuneReport:
    """Counts per state and the best trial (validation value only) of a study."""
    counts: Dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    best = None
    if counts.get("complete"):
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": decoded(trial.params),
                "config": trial.user_attrs.get("config"), "run_key": trial.user_attrs.get("run_key")}
    return TuneReport(name, storage, counts, best, metric)


def summary_line(report: TuneReport) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts.items()))
    best = (f"best trial {report.best['number']}: valid {report.metric} {report.best['value']:.4f} "
            f"with {format_config(report.best['params'])}" if report.best else "no complete trial yet")
    return f"study '{report.study}': {sum(report.counts.values())} trials ({counts}); {best}"


def winner_overrides(src: Path, results_dir: Path, dataset: str, models: Sequence[str], studies: Mapping[str, str],
                     storage: Optional[str], overrides: Sequence[str] = ()) -> Tuple[List[Override], List[str]]:
    """For ``compare --from-tune``: each model's best trial as exact ``Override`` items (grid keys as
    one-element candidate lists, as in :meth:`.tune_space.SearchSpace.config`), so ``compare``
    plans exactly the trial's configuration (and finds its run, when seed and epochs match), plus
    one line per model saying which trial it is."""
    optuna = require_optuna()
    unknown = sorted(set(studies) - set(models))
    if unknown:
        raise ConfigError(f"--from-tune: {unknown} are not among the compared models {list(models)}.")
    storage_obj, label = open_storage(storage, Path(results_dir) / dataset)
    out: List[Override] = []
    notes: List[str] = []
    mine = {o.split("=", 1)[0].strip() for o in overrides}
    for model in models:
        name = studies.get(model) or default_study_name(dataset, model)
        try:
            study = optuna.load_study(study_name=name, storage=storage_obj)
        except KeyError:
            tune_command = command("tune", "--mmrec", src.parent, "-d", dataset, "-m", model, "--trials", "20",
                                   "--results", results_dir)
            raise ConfigError(f"--from-tune: no study '{name}' in {label}; make it with mmrec-rearm tune first: "
                              f"`{tune_command}`, or name the study with --from-tune {model}=STUDY.") from None
        report = study_report(study, name, label, "")
        if report.best is None:
            raise ConfigError(f"--from-tune: study '{name}' in {label} has no complete trial yet; tune further.")
        grid = set(grid_keys(merged_config(src, model, dataset)))
        config = report.best["config"] or {}
        for key, value in config.items():
            if key in mine or f"{model}.{key}" in mine:
                notes.append(f"warning: --set on '{key}' is replaced by {model}'s tuned value {value!r}")
            out.append(Override(model, key, [value] if key in grid else value, f"{model}.{key}={value!r} (tuned)"))
        settings = study.user_attrs.get(SETTINGS_ATTR, {})
        notes.append(f"- {model}: trial {report.best['number']} of study '{name}' (valid {settings.get('metric')} "
                     f"{report.best['value']:.4f}, seed {settings.get('seed')}, epochs {settings.get('epochs')}): "
                     f"{format_config(report.best['params'])}")
    return out, notes


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _last_report(trial) -> Tuple[Optional[int], Optional[float]]:
    if not trial.intermediate_values:
        return None, None
    step = max(trial.intermediate_values)
    return step, trial.intermediate_values[step]


def _figures(study, folder: Path, stem: str) -> Tuple[Dict[str, Path], List[str]]:
    """Optuna's matplotlib plots as PNG; a plot that cannot be drawn becomes a note instead."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
        from optuna.visualization import matplotlib as plots
    except ImportError as exc:
        return {}, [f"no figures: matplotlib is not installed ({exc}); `pip install 'mmrec-rearm[tune]'`"]
    from .plots import save_figure

    files: Dict[str, Path] = {}
    notes: List[str] = []
    for name, draw in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances),
                       ("intermediate", plots.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(study)
        except Exception as exc:  # too few trials for a plot must not cost the study its summary
            notes.append(f"no {name} figure: {type(exc).__name__}: {exc}")
            continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        files[name] = save_figure(figure, folder / f"{stem}-{name}.png")
        pyplot.close(figure)
    return files, notes


def write_summary(study, folder: Path, *, metric: str, storage: str, space=None,
                  settings: Optional[dict] = None) -> Dict[str, Path]:
    """``<folder>/<study>.md`` (best trial, importances, every trial, the space) and the PNGs of
    the optimisation history, the parameter importances and the per-epoch validation values."""
    optuna = require_optuna()
    folder.mkdir(parents=True, exist_ok=True)
    stem = _safe_name(study.study_name)
    report = study_report(study, study.study_name, storage, metric)
    settings = settings or {}
    importances: Dict[str, float] = {}
    notes: List[str] = []
    if report.counts.get("complete", 0) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"no parameter importances: {exc}")
    else:
        notes.append("no parameter importances: they need at least two complete trials")
    figures, figure_notes = _figures(study, folder, stem)
    notes += figure_notes
    states = ("complete", "pruned", "fail", "running", "waiting")
    lines = [f"# Tuning study `{study.study_name}`", "",
             f"Storage `{storage}`; model {settings.get('model')} on dataset {settings.get('dataset')}; objective: "
             f"validation {metric} (MMRec's valid_metric), maximised; seed {settings.get('seed')}, epochs "
             f"{settings.get('epochs') or 'from the YAML files'}; sampler {type(study.sampler).__name__}, pruner "
             f"{type(study.pruner).__name__}. Test values are never read for the choice.", "",
             "| trials | " + " | ".join(states) + " |", "|---:|" + "---:|" * len(states),
             f"| {sum(report.counts.values())} | " + " | ".join(str(report.counts.get(s, 0)) for s in states) + " |", ""]
    if report.best:
        best = report.best
        lines += ["## Best trial (chosen on validation only)", "",
                  f"Trial {best['number']}: validation {metric} **{best['value']:.4f}**; its run is `{best['run_key']}` "
                  "in runs.jsonl. `compare --from-tune` runs this configuration over the seeds.", "",
                  "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {v!r} |" for k, v in best["params"].items()]
        lines += ["", f"MMRec configuration: `{json.dumps(best['config'], sort_keys=True)}`", ""]
    if importances:
        lines += ["## Parameter importances (fANOVA over the validation values)", "", "| parameter | importance |",
                  "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in importances.items()] + [""]
    if space is not None:
        lines += ["## Search space", ""] + [f"- {p.describe()}" for p in space.params.values()] + [""]
    lines += ["## Trials", "", f"| trial | state | valid {metric} | last epoch reported | parameters |",
              "|---:|---|---:|---:|---|"]
    for trial in study.get_trials(deepcopy=False):
        step, last = _last_report(trial)
        value = trial.value if trial.value is not None else last
        lines.append(f"| {trial.number} | {trial.state.name.lower()} | {'' if value is None else f'{value:.4f}'} | "
                     f"{'' if step is None else step} | {format_config(decoded(trial.params))} |")
    lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({path.name})" for name, path in figures.items()] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    path = folder / f"{stem}.md"
    write_text(path, "\n".join(lines), what="the tuning summary")
    return {"summary": path, **figures}
