"""``heatmap``: Fig. 5, the change of predicted interaction probabilities brought by the refinement.

The paper (Sec. 5.5) computes "the probability of interactions before and after refining contrastive
learning" for some users and items of Baby and plots the difference. Refining means the modal-shared
meta-network plus the orthogonal constraint (Sec. 4.4); the orthogonal constraint only acts on
training, so "before" cannot be read off the refined model itself. We therefore compare two trained
models of the same data, configuration and seed: the full REARM ("after") and the Table 3 variant
``wo_ref`` ("before": no meta-network, no orthogonal loss, plain contrastive learning), both
restored from their best-validation checkpoints. The probability of a (user, item) pair is the
sigmoid of the model's score (the dot product it ranks by, the quantity its BPR loss (eq. 21)
treats as a logit); a cell shows ``sigmoid(after) - sigmoid(before)``. Boxes mark the training
interactions (the paper's yellow boxes), stars the test interactions (pairs such as the paper's
u1983-i2975 that the refined model should find).

Sample: ``n_users`` users drawn (seeded) among those with a test interaction; items: their test
items first (at most half of ``n_items``), then their training items, then other items; both
sorted by id. Explicit ``users`` / ``items`` replace the draw.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import check_writable, write_text
from ..errors import CheckpointError, ConfigError
from ..hints import command
from .checkpoints import LoadedModel, Splits, rebuild_model, scores
from .plots import new_figure, save_figure
from .store import RunStore

PathLike = Union[str, "os.PathLike[str]"]
AFTER, BEFORE = "none", "wo_ref"   # the ablation settings compared by default


@dataclass
class HeatmapData:
    """Probabilities of the sampled pairs; all matrices (n_users, n_items) over ``users`` x ``items``."""
    users: np.ndarray           # (n_u,) user ids, rows
    items: np.ndarray           # (n_i,) item ids, columns
    before: np.ndarray          # sigmoid of the "before" model's scores
    after: np.ndarray           # sigmoid of the "after" model's scores
    train: np.ndarray           # bool: a training interaction
    test: np.ndarray            # bool: a test interaction
    labels: Tuple[str, str] = ("w/o ref", "REARM")   # (before, after)

    @property
    def difference(self) -> np.ndarray:
        return self.after - self.before


@dataclass
class HeatmapResult:
    data: HeatmapData
    files: Dict[str, Path] = field(default_factory=dict)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _ids(values: Sequence[int], limit: int, what: str) -> np.ndarray:
    out = np.array(list(dict.fromkeys(int(v) for v in values)), dtype=np.int64)
    if out.size == 0:
        raise ConfigError(f"{what}: give at least one id.")
    bad = out[(out < 0) | (out >= limit)]
    if bad.size:
        raise ConfigError(f"{what}: id {int(bad[0])} is outside 0..{limit - 1}.")
    return np.sort(out)


def sample_pairs(splits: Splits, n_users: int = 20, n_items: int = 20, seed: int = 0,
                 users: Optional[Sequence[int]] = None, items: Optional[Sequence[int]] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """(users, items) to show, sorted ids (see the module doc for the rule)."""
    rng = np.random.default_rng(seed)
    if users is not None:
        chosen_users = _ids(users, splits.n_users, "users")
    else:
        with_test = np.flatnonzero(np.diff(splits.test.indptr) > 0)
        if with_test.size == 0:
            raise ConfigError("heatmap: the dataset has no test interaction to sample users from; pass users.")
        chosen_users = np.sort(rng.choice(with_test, size=min(n_users, with_test.size), replace=False))
    if items is not None:
        return chosen_users, _ids(items, splits.n_items, "items")
    picked: list = []
    test_items = np.unique(splits.test[chosen_users].indices)
    picked += list(rng.permutation(test_items)[: max(1, n_items // 2)])
    train_items = np.setdiff1d(np.unique(splits.train[chosen_users].indices), picked)
    picked += list(rng.permutation(train_items)[: max(0, n_items - len(picked))])
    if len(picked) < n_items:
        rest = np.setdiff1d(np.arange(splits.n_items), picked)
        picked += list(rng.permutation(rest)[: n_items - len(picked)])
    return chosen_users, np.sort(np.array(picked[:n_items], dtype=np.int64))


def _label(checkpoint: Dict[str, Any]) -> str:
    ablation = str((checkpoint.get("config") or {}).get("ablation") or "none")
    return "REARM" if ablation == "none" else ablation.replace("wo_", "w/o ")


def difference_data(after: LoadedModel, before: LoadedModel, users: np.ndarray, items: np.ndarray) -> HeatmapData:
    """Probabilities of both models on ``users`` x ``items`` and the interaction marks."""
    if (after.splits.n_users, after.splits.n_items) != (before.splits.n_users, before.splits.n_items):
        raise CheckpointError("heatmap: the two checkpoints were trained on datasets of different sizes "
                              f"({after.splits.n_users}x{after.splits.n_items} vs "
                              f"{before.splits.n_users}x{before.splits.n_items}); compare runs of one dataset.")
    p_after = _sigmoid(scores(after.model, users)[:, items].astype(np.float64))
    p_before = _sigmoid(scores(before.model, users)[:, items].astype(np.float64))
    train = after.splits.train[users][:, items].toarray() > 0
    test = after.splits.test[users][:, items].toarray() > 0
    return HeatmapData(users, items, p_before, p_after, train, test,
                       (_label(before.checkpoint), _label(after.checkpoint)))


def heatmap_csv(data: HeatmapData) -> str:
    """Long format: one row per (user, item) with both probabilities, the difference and the marks."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["user", "item", "p_before", "p_after", "difference", "train", "test"])
    for r, user in enumerate(data.users):
        for c, item in enumerate(data.items):
            writer.writerow([int(user), int(item), f"{data.before[r, c]:.6f}", f"{data.after[r, c]:.6f}",
                             f"{data.difference[r, c]:.6f}", int(data.train[r, c]), int(data.test[r, c])])
    return out.getvalue()


def plot_heatmap(data: HeatmapData, path: PathLike, title: Optional[str] = None) -> Path:
    """Fig. 5-style PNG: rows users, columns items, colour = probability difference (symmetric
    around 0), gold boxes = training interactions, black stars = test interactions. Needs matplotlib."""
    diff = data.difference
    n_u, n_i = diff.shape
    figure, axes = new_figure(max(4.0, 0.32 * n_i + 2.0), max(3.0, 0.32 * n_u + 1.2))
    from matplotlib.lines import Line2D  # importable once new_figure found matplotlib
    from matplotlib.patches import Rectangle

    limit = float(np.abs(diff).max()) or 1e-6
    image = axes.imshow(diff, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    for r, c in zip(*np.nonzero(data.train)):
        axes.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="gold", linewidth=1.8))
    rows, cols = np.nonzero(data.test)
    if rows.size:
        axes.scatter(cols, rows, marker="*", s=40, color="black")
    axes.set_xticks(range(n_i))
    axes.set_xticklabels([f"i{int(i)}" for i in data.items], rotation=90, fontsize=6)
    axes.set_yticks(range(n_u))
    axes.set_yticklabels([f"u{int(u)}" for u in data.users], fontsize=6)
    before, after = data.labels
    axes.set_title(title or f"P({after}) - P({before})", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor="gold", linewidth=1.8, label="training interaction"),
               Line2D([], [], marker="*", color="black", linestyle="", label="test interaction")]
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / max(n_u, 1)),
                ncol=2, frameon=False, fontsize=7)
    return save_figure(figure, path)


def find_checkpoint_pair(results_dir: PathLike, dataset: str, seed: Optional[int] = None,
                         after: str = AFTER, before: str = BEFORE) -> Tuple[Path, Path]:
    """Checkpoints of two finished REARM runs in ``<results_dir>/<dataset>/runs.jsonl`` that differ
    only in ``ablation`` (``after`` vs ``before``; an absent key counts as ``none``): same
    configuration otherwise, seed and epochs. The smallest such seed unless ``seed`` is given."""
    found: Dict[Tuple[str, int, Any], Dict[str, Path]] = {}
    checkout = "DIR"
    for record in RunStore(results_dir, dataset).latest().values():
        if record.get("mmrec_log"):  # <checkout>/src/log/<file>: the checkout these runs used
            checkout = str(Path(record["mmrec_log"]).parents[2])
        path = record.get("checkpoint")
        if record.get("status") != "ok" or record.get("model") != "REARM" or not path or not Path(path).is_file():
            continue
        if seed is not None and int(record.get("seed", -1)) != seed:
            continue
        config = dict(record.get("config") or {})
        ablation = str(config.pop("ablation", "none") or "none")
        group = (repr(sorted(config.items())), int(record["seed"]), record.get("epochs"))
        found.setdefault(group, {})[ablation] = Path(path)
    pairs = sorted((g[1], g) for g, by in found.items() if after in by and before in by)
    if not pairs:
        raise CheckpointError(
            f"{Path(results_dir) / dataset / 'runs.jsonl'}: no two REARM runs with checkpoints that differ only "
            f"in ablation {after} vs {before}{'' if seed is None else f' for seed {seed}'}; run "
            f"`{command('ablate', '--mmrec', checkout, '-d', dataset, '--variants', 'full', before, '--results', results_dir)}`"
            " first, or pass both files.")
    group = pairs[0][1]
    return found[group][after], found[group][before]


def heatmap(after: PathLike, before: PathLike, out_png: PathLike = "heatmap.png", *,
            users: Optional[Sequence[int]] = None, items: Optional[Sequence[int]] = None, n_users: int = 20,
            n_items: int = 20, seed: int = 0, data_dir: Optional[PathLike] = None, cache_dir: Any = None,
            title: Optional[str] = None, plot: bool = True, allow_other_data: bool = False) -> HeatmapResult:
    """Draw Fig. 5 from two checkpoints (``after``: the full model, ``before``: ``wo_ref``) and write
    ``out_png`` plus the same numbers as ``<out_png stem>.csv`` (plot=False: the CSV only, no
    matplotlib needed; the output folder is checked before the models are rebuilt). data_dir /
    cache_dir / allow_other_data: see :func:`.checkpoints.rebuild_model`."""
    for name, value in (("n_users", n_users), ("n_items", n_items)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {value!r}.")
    check_writable(Path(out_png).parent, what="the heatmap files")
    model_after = rebuild_model(after, data_dir=data_dir, cache_dir=cache_dir, allow_other_data=allow_other_data)
    model_before = rebuild_model(before, data_dir=data_dir, cache_dir=cache_dir, allow_other_data=allow_other_data)
    chosen_users, chosen_items = sample_pairs(model_after.splits, n_users, n_items, seed, users, items)
    data = difference_data(model_after, model_before, chosen_users, chosen_items)
    out_png = Path(out_png)
    result = HeatmapResult(data)
    result.files["csv"] = out_png.with_suffix(".csv")
    write_text(result.files["csv"], heatmap_csv(data), what="the heatmap CSV")
    if plot:
        result.files["png"] = plot_heatmap(data, out_png, title)
    return result
