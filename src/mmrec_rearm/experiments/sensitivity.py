"""``sensitivity``: one REARM parameter swept over values on one or more datasets (Fig. 3).

Every value is a variant (the parameter pinned, everything else as configured) run through
:func:`.variants.run_variants`, so runs are stored, resumed and selected on validation exactly as
in ``compare``. The reported number of a (dataset, value) point is the test ``metric`` (default
R@20) at the best-validation epoch, mean and sample std over seeds. Written to
``<results>/sensitivity/<param>.csv`` and ``<param>.png`` (one line per dataset, error bars = std
over seeds; matplotlib is optional, see :mod:`.plots`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..atomic import check_writable, write_text
from ..errors import ConfigError
from .runqueue import Progress, RunFunction
from .mmrec_config import merged_config, mmrec_src
from .plan import RESERVED_KEYS
from .plots import new_figure, save_figure
from .stats import ModelSummary
from .variants import Variant, VariantRuns, run_variants

PathLike = Union[str, "os.PathLike[str]"]

#: Fig. 3's parameters and the values the paper searched (Sec. 5.4.1-5.4.4), under our key names.
FIG3_VALUES: Dict[str, Tuple[Any, ...]] = {
    "uu_co_weight": tuple(round(0.1 * i, 1) for i in range(10)),
    "ii_co_weight": tuple(round(0.1 * i, 1) for i in range(10)),
    "rank": tuple(range(1, 11)),
    "n_layers": tuple(range(0, 10)),
}
METRIC_LABELS = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}


@dataclass(frozen=True)
class SensitivityPoint:
    """One (dataset, value): the test metric of the configuration chosen on validation."""
    dataset: str
    value: Any
    seeds: Tuple[int, ...]
    mean: Optional[float]
    std: Optional[float]
    per_seed: Tuple[float, ...]
    valid_mean: Optional[float]
    config: Dict[str, Any]


@dataclass
class SensitivityReport:
    param: str
    metric: str
    values: List[Any]
    points: List[SensitivityPoint]
    runs: Dict[str, VariantRuns]
    files: Dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs.values())


def normalise_values(param: str, values: Optional[Sequence[Any]]) -> List[Any]:
    """``values`` (default: the paper's grid of ``param``) with ints made floats when any value is a
    float, so ``0`` and ``0.0`` are one configuration (as :mod:`.plan` does for YAML float keys)."""
    if values is None:
        if param not in FIG3_VALUES:
            raise ConfigError(f"sensitivity: no default values for '{param}'; pass values (--values ...). "
                              f"Defaults exist for {', '.join(FIG3_VALUES)}.")
        values = FIG3_VALUES[param]
    values = list(values)
    if not values:
        raise ConfigError(f"sensitivity: the list of values of '{param}' is empty.")
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(isinstance(v, float) for v in numbers):
        values = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    keys = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"sensitivity: the values {values} of '{param}' repeat one.")
    return values


def value_variants(param: str, values: Sequence[Any]) -> List[Variant]:
    return [Variant(f"{param}={json.dumps(v)}", f"{param}={v}", ((param, v),)) for v in values]


def points_of(dataset: str, summaries: Mapping[str, ModelSummary], variants: Sequence[Variant],
              metric: str) -> List[SensitivityPoint]:
    """One point per variant (in order) from its validation-selected configuration."""
    out = []
    for variant in variants:
        summary = summaries[variant.name]
        chosen = summary.selected
        values = chosen.values("test", metric) if chosen else {}
        out.append(SensitivityPoint(
            dataset, variant.settings[0][1], tuple(sorted(values)),
            chosen.mean("test", metric) if chosen else None, chosen.std("test", metric) if chosen else None,
            tuple(values[s] for s in sorted(values)),
            chosen.mean("valid", summary.valid_metric) if chosen else None,
            dict(chosen.config) if chosen else {}))
    return out


def sensitivity_csv(points: Sequence[SensitivityPoint], param: str, metric: str) -> str:
    """Columns: dataset, the parameter, n seeds, seeds, test metric mean / std / per seed (6 decimals),
    validation mean, chosen configuration."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", param, "n", "seeds", f"{metric}_mean", f"{metric}_std", f"{metric}_per_seed",
                     "valid_mean", "config"])
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    for p in points:
        writer.writerow([p.dataset, p.value, len(p.seeds), " ".join(map(str, p.seeds)), fmt(p.mean), fmt(p.std),
                         " ".join(f"{v:.6f}" for v in p.per_seed), fmt(p.valid_mean),
                         json.dumps(p.config, sort_keys=True, default=str)])
    return out.getvalue()


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sensitivity(points: Sequence[SensitivityPoint], param: str, metric: str, path: PathLike) -> Path:
    """Fig. 3-style PNG: ``metric`` against the value, one line per dataset, error bars = std over
    seeds (none with one seed). Non-numeric values are placed at equal steps. Needs matplotlib."""
    values = list(dict.fromkeys(p.value for p in points))
    numeric = _numeric(values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    figure, axes = new_figure(4.2, 3.2)
    for dataset in dict.fromkeys(p.dataset for p in points):
        mine = [p for p in points if p.dataset == dataset and p.mean is not None]
        if not mine:
            continue
        axes.errorbar([position[p.value] for p in mine], [p.mean for p in mine],
                      yerr=[p.std or 0.0 for p in mine], marker="o", markersize=4, capsize=3, label=dataset)
    axes.set_xlabel(param)
    axes.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (test, best valid epoch)")
    axes.set_xticks([position[v] for v in values])
    axes.set_xticklabels([str(v) for v in values])
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(frameon=False)
    return save_figure(figure, path)


def _data_dir_of(data_dirs: Union[None, PathLike, Mapping[str, PathLike]], dataset: str,
                 datasets: Sequence[str]) -> Optional[PathLike]:
    if data_dirs is None:
        return None
    if isinstance(data_dirs, Mapping):
        return data_dirs.get(dataset)
    if len(datasets) != 1:
        raise ConfigError(f"data_dirs: a single folder {data_dirs} is ambiguous for datasets {list(datasets)}; "
                          "give one per dataset (NAME=DIR).")
    return data_dirs


def sensitivity(mmrec_dir: PathLike, datasets: Sequence[str], param: str, values: Optional[Sequence[Any]] = None,
                seeds: Union[int, Sequence[int]] = 1, epochs: Optional[int] = None, overrides: Sequence[str] = (),
                results_dir: PathLike = "results", python: str = sys.executable, *, model: str = "REARM",
                data_dirs: Union[None, PathLike, Mapping[str, PathLike]] = None, metric: str = "recall@20",
                plot: bool = True, execute: bool = True, retry_failed: bool = True,
                timeout_s: Optional[float] = None, jobs: Optional[int] = None,
                devices: Optional[str] = None, progress: Optional[Progress] = print,
                run_fn: Optional[RunFunction] = None) -> SensitivityReport:
    """Sweep ``param`` of ``model`` over ``values`` on every dataset; write the CSV and the PNG.

    values: None = the paper's grid (:data:`FIG3_VALUES`). data_dirs: a dataset folder outside the
    checkout per dataset (mapping), or one folder when there is one dataset. metric: MMRec's
    lower-case metric key. plot=False writes the CSV only (no matplotlib needed). Other arguments
    as in :func:`~.compare.compare`.
    """
    say: Progress = progress or (lambda _message: None)
    datasets = list(datasets)
    if not datasets or len(set(datasets)) != len(datasets):
        raise ConfigError(f"datasets: {datasets}; name each dataset once, at least one.")
    if param in RESERVED_KEYS:
        raise ConfigError(f"param '{param}' is set by the runs themselves; choose a model setting.")
    src = mmrec_src(mmrec_dir)
    for dataset in datasets:
        if param not in merged_config(src, model, dataset):
            raise ConfigError(f"param '{param}' is in none of {model}'s MMRec configuration files for dataset "
                              f"'{dataset}' (names are case-sensitive, e.g. uu_co_weight, rank, n_layers).")
    values = normalise_values(param, values)
    variants = value_variants(param, values)
    folder = Path(check_writable(Path(results_dir) / "sensitivity", what="the sensitivity CSV and plot"))
    metric = metric.lower()
    runs: Dict[str, VariantRuns] = {}
    points: List[SensitivityPoint] = []
    for dataset in datasets:
        runs[dataset] = run_variants(mmrec_dir, dataset, variants, seeds, epochs, overrides, results_dir, python,
                                     model=model, data_dir=_data_dir_of(data_dirs, dataset, datasets),
                                     execute=execute, retry_failed=retry_failed, timeout_s=timeout_s,
                                     jobs=jobs, devices=devices, progress=progress, run_fn=run_fn)
        points += points_of(dataset, runs[dataset].summaries, variants, metric)
    report = SensitivityReport(param, metric, values, points, runs)
    report.files["csv"] = folder / f"{param}.csv"
    write_text(report.files["csv"], sensitivity_csv(points, param, metric), what="the sensitivity CSV")
    if plot:
        report.files["png"] = plot_sensitivity(points, param, metric, folder / f"{param}.png")
    say(f"wrote {', '.join(str(p) for p in report.files.values())}")
    return report
