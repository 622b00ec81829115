"""Selection on validation, mean ± std over seeds, and paired tests between models.

* A model's configuration is chosen on the **validation** split only: the highest mean over
  seeds of MMRec's ``valid_metric`` (default ``recall@20``). Only configurations with the largest
  number of finished seeds compete, so a configuration is never chosen because an unlucky seed of
  it is still missing. Ties keep the earlier configuration in MMRec's grid order. MMRec's own
  ``quick_start`` instead keeps the configuration with the best *test* value
  (enoche/MMRec#64), which inflates reported numbers; we never look at test to choose.
* Spread is the sample standard deviation (``ddof=1``) over seeds; it is absent with one seed.
* The paired test is a two-sided paired t-test (``scipy.stats.ttest_rel``) over the seeds both
  models finished, on per-seed test values of the selected configurations; with fewer than two
  common seeds there is no test ("n/a").
* A run is **capped** when its best validation epoch lies in the last :data:`CAP_SHARE` of its
  epoch budget (at least the last epoch) and early stopping did not end it: it was still
  improving when the budget ran out, so its numbers understate a converged model. Tables mark
  such models and commands warn about them (:func:`near_cap`, :func:`capped_note`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

#: A best epoch in this last share of the epoch budget counts as "at the cap".
CAP_SHARE = 0.1
#: Table 2's columns: (label, MMRec metric key).
TABLE_METRICS = (("R@10", "recall@10"), ("R@20", "recall@20"), ("N@10", "ndcg@10"), ("N@20", "ndcg@20"))


def mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def sample_std(values: Sequence[float]) -> Optional[float]:
    if len(values) < 2:
        return None
    centre = sum(values) / len(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


@dataclass
class ConfigResult:
    """The finished seeds of one configuration of one model."""
    model: str
    config: dict
    config_id: str
    epochs: Optional[int]
    order: int                                   # position of its first record: grid order
    valid: Dict[int, dict] = field(default_factory=dict)   # seed -> metric dict
    test: Dict[int, dict] = field(default_factory=dict)
    best_epoch: Dict[int, Optional[int]] = field(default_factory=dict)
    wall_s: Dict[int, float] = field(default_factory=dict)
    host_fixes: Dict[int, List[str]] = field(default_factory=dict)  # seed -> runner fixes applied (runner.py)
    cap: Dict[int, Optional[int]] = field(default_factory=dict)     # seed -> epoch budget of the run
    capped: Dict[int, bool] = field(default_factory=dict)           # seed -> best epoch at the cap (near_cap)

    @property
    def seeds(self) -> List[int]:
        return sorted(self.valid)

    def values(self, split: str, metric: str) -> Dict[int, float]:
        table = self.valid if split == "valid" else self.test
        return {s: float(m[metric]) for s, m in table.items() if metric in m and m[metric] is not None}

    def mean(self, split: str, metric: str) -> Optional[float]:
        return mean(list(self.values(split, metric).values()))

    def std(self, split: str, metric: str) -> Optional[float]:
        return sample_std(list(self.values(split, metric).values()))


@dataclass
class ModelSummary:
    model: str
    valid_metric: str
    configs: List[ConfigResult]
    failed: List[dict]                 # latest record of each run whose last attempt failed
    selected: Optional[ConfigResult]


def epoch_cap(record: dict) -> Optional[int]:
    """The epoch budget a run had: MMRec's ``epochs`` as the runner saw it, else the requested one."""
    cap = record.get("epoch_cap", record.get("epochs"))
    return int(cap) if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0 else None


def near_cap(record: dict) -> bool:
    """Whether the run's best epoch (0-based) is in the last :data:`CAP_SHARE` of its budget and
    early stopping did not end it (see the module doc)."""
    cap, best = epoch_cap(record), record.get("best_epoch")
    if cap is None or best is None or record.get("stopped_early"):
        return False
    return int(best) >= cap - max(1, math.ceil(CAP_SHARE * cap))


def capped_note(summary: "ModelSummary") -> str:
    """One sentence when seeds of the selected configuration hit the epoch cap, else ''."""
    chosen = summary.selected
    if chosen is None:
        return ""
    seeds = [s for s in chosen.seeds if chosen.capped.get(s)]
    if not seeds:
        return ""
    where = ", ".join(f"epoch {chosen.best_epoch.get(s)} of {chosen.cap.get(s)}" for s in seeds)
    return (f"best validation epoch at the epoch cap in {len(seeds)} of {len(chosen.seeds)} seed(s) ({where}): "
            "still improving when training stopped, so these numbers understate a converged model; "
            "rerun with a larger --epochs")


def select_on_validation(configs: Sequence[ConfigResult], valid_metric: str) -> Optional[ConfigResult]:
    """The configuration with the best mean validation ``valid_metric`` (see module doc)."""
    scored = [c for c in configs if c.values("valid", valid_metric)]
    if not scored:
        return None
    most = max(len(c.values("valid", valid_metric)) for c in scored)
    eligible = sorted((c for c in scored if len(c.values("valid", valid_metric)) == most), key=lambda c: c.order)
    best = eligible[0]
    for candidate in eligible[1:]:
        if candidate.mean("valid", valid_metric) > best.mean("valid", valid_metric):
            best = candidate
    return best


def summarise(records: Iterable[dict], valid_metric: Mapping[str, str], models: Sequence[str]) -> Dict[str, ModelSummary]:
    """Group run records by model and configuration and select each model's configuration.

    ``records`` are the latest records of the runs to report (one per run key), in plan order.
    """
    by_model: Dict[str, Dict[str, ConfigResult]] = {m: {} for m in models}
    failed: Dict[str, List[dict]] = {m: [] for m in models}
    for index, record in enumerate(records):
        model = record.get("model")
        if model not in by_model:
            continue
        if record.get("status") != "ok":
            failed[model].append(record)
            continue
        group = by_model[model].get(record["config_id"])
        if group is None:
            group = by_model[model][record["config_id"]] = ConfigResult(
                model, record.get("config") or {}, record["config_id"], record.get("epochs"), index)
        seed = int(record["seed"])
        group.valid[seed] = record.get("valid") or {}
        group.test[seed] = record.get("test") or {}
        group.best_epoch[seed] = record.get("best_epoch")
        group.wall_s[seed] = float(record.get("wall_s") or 0.0)
        if record.get("host_fixes"):
            group.host_fixes[seed] = list(record["host_fixes"])
        group.cap[seed] = epoch_cap(record)
        group.capped[seed] = near_cap(record)
    out = {}
    for model in models:
        configs = sorted(by_model[model].values(), key=lambda c: c.order)
        metric = valid_metric[model]
        out[model] = ModelSummary(model, metric, configs, failed[model], select_on_validation(configs, metric))
    return out


@dataclass
class PairedComparison:
    """Target minus baseline on one test metric, over the seeds both finished."""
    target: str
    baseline: str
    metric: str
    seeds: List[int]
    target_mean: Optional[float]
    baseline_mean: Optional[float]
    t: Optional[float]
    p: Optional[float]

    @property
    def difference(self) -> Optional[float]:
        if self.target_mean is None or self.baseline_mean is None:
            return None
        return self.target_mean - self.baseline_mean

    @property
    def relative(self) -> Optional[float]:
        """Difference as a fraction of the baseline mean (0.05 = 5 % better)."""
        if self.difference is None or not self.baseline_mean:
            return None
        return self.difference / self.baseline_mean


def paired_test(target: ConfigResult, baseline: ConfigResult, metric: str) -> PairedComparison:
    a, b = target.values("test", metric), baseline.values("test", metric)
    common = sorted(set(a) & set(b))
    xs, ys = [a[s] for s in common], [b[s] for s in common]
    t_value = p_value = None
    if len(common) >= 2:
        from scipy import stats as scipy_stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero variance of the differences gives nan: reported as n/a
            outcome = scipy_stats.ttest_rel(xs, ys)
        t_value, p_value = float(outcome.statistic), float(outcome.pvalue)
        if math.isnan(p_value):
            t_value = p_value = None
    return PairedComparison(target.model, baseline.model, metric, common, mean(xs), mean(ys), t_value, p_value)


def best_baseline(summaries: Mapping[str, ModelSummary], target: str, metric: str) -> Optional[str]:
    """The baseline whose selected configuration has the highest mean *test* value on ``metric``.

    Used only to report against the strongest competitor (as the paper's improvement row does);
    configurations are never chosen on test.
    """
    best_name, best_value = None, None
    for name, summary in summaries.items():
        if name == target or summary.selected is None:
            continue
        value = summary.selected.mean("test", metric)
        if value is not None and (best_value is None or value > best_value):
            best_name, best_value = name, value
    return best_name


def comparisons(summaries: Mapping[str, ModelSummary], target: str,
                metrics: Sequence[str] = tuple(m for _, m in TABLE_METRICS)) -> List[PairedComparison]:
    """Paired tests of ``target`` against every baseline with a selected configuration."""
    own = summaries.get(target)
    if own is None or own.selected is None:
        return []
    rows = []
    for name, summary in summaries.items():
        if name == target or summary.selected is None:
            continue
        for metric in metrics:
            rows.append(paired_test(own.selected, summary.selected, metric))
    return rows
