"""``mmrec-rearm estimate``: what a REARM run on a dataset will cost, before it starts.

    mmrec-rearm estimate --mmrec MMREC_DIR -d DATASET [--set key=value ...] [--gpu-memory 24GB]
    mmrec-rearm estimate DATASET_DIR [--inter FILE] [--feature NAME=FILE ...] [--set ...] [--gpu-memory ...]

With ``--mmrec`` the settings and feature files are the ones a training run uses
(:func:`~mmrec_rearm.experiments.training_graphs.training_settings`: MMRec's YAML merge, REARM's
presets and modalities); with a dataset folder, this package's REARM.yaml over MMRec's defaults
(batch 2048) and the feature files of ``graphs DATASET_DIR``. ``--set`` overrides any model or graph key. Only counts are read: the
.inter file and the .npy headers (never the feature values). The numbers come from
:mod:`mmrec_rearm.costmodel`. No torch and no MMRec are imported.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import costmodel as cm
from .errors import ConfigError, DatasetError

__all__ = ["estimate", "format_report", "parse_size", "dataset_shape", "add_subcommand"]

#: MMRec's own defaults (src/configs/overall.yaml) for a dataset folder without a checkout.
_HOST_DEFAULTS = {"train_batch_size": 2048, "eval_batch_size": 4096, "learner": "adam"}
_OPTIMISER_STATES = {"adam": 2, "adamw": 2, "adagrad": 1, "rmsprop": 1, "sgd": 0}


def parse_size(text: str) -> float:
    """``"24GB"``, ``"24GiB"``, ``"24G"``, ``"80"`` (GiB) or ``"512MB"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise ConfigError(f"--gpu-memory {text!r}: expected a size such as 24GB, 40GiB or 80 (GiB).")
    unit = match.group(2) or "g"
    return float(match.group(1)) * 1024.0 ** "kmgt".index(unit) * 1024.0


def dataset_shape(inter_path: Path, feature_paths: Sequence[Path]) -> cm.DatasetShape:
    """Counts of a dataset: ids and training degrees from the .inter file, widths from the .npy headers."""
    from .data import read_interactions
    from .features import check_npy_file

    parsed = read_interactions(inter_path)
    if parsed.users.size == 0:
        raise DatasetError(f"{inter_path}: no interaction rows below the header; the file is empty.")
    n_users, n_items = int(parsed.users.max()) + 1, int(parsed.items.max()) + 1
    train = parsed.labels == 0
    pairs = np.unique(parsed.users[train] * n_items + parsed.items[train])
    user_deg = np.bincount(pairs // n_items, minlength=n_users).astype(np.float64)
    item_deg = np.bincount(pairs % n_items, minlength=n_items).astype(np.float64)
    widths = []
    for path in feature_paths:
        shape = check_npy_file(path, "feature file")
        if shape[0] != n_items:
            raise DatasetError(f"{path}: features of shape {shape}, expected ({n_items}, d) "
                               f"(n_items = max itemID + 1 of {inter_path.name}).")
        widths.append(shape[1])
    return cm.DatasetShape(n_users=n_users, n_items=n_items, n_train=int(pairs.size), widths=tuple(widths),
                           item_degree_sq=float(item_deg @ item_deg), user_degree_sq=float(user_deg @ user_deg),
                           n_rows=int(parsed.users.size))


def _checkout_inputs(mmrec: str, dataset: Optional[str], overrides: Sequence[str]):
    """(get, settings, dataset folder, .inter path, feature files) as a training run in the checkout sees them."""
    from .experiments.training_graphs import training_settings

    if not dataset:
        raise ConfigError("estimate --mmrec needs -d DATASET (a dataset of that checkout).")
    found = training_settings(mmrec, dataset, overrides)
    folder = Path(found.folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder of '{dataset}' not found; check -d and the checkout's data_path.")
    return found.get, found.settings, folder, folder / found.inter, [Path(m.path) for m in found.modalities]


def _folder_inputs(folder: str, inter: Optional[str], features: Optional[Mapping[str, str]],
                   overrides: Sequence[str]):
    """The same for a dataset folder: this package's REARM.yaml over MMRec's defaults, the files of
    ``graphs DATASET_DIR`` (``--feature`` or image_feat.npy / text_feat.npy)."""
    from .data import feature_paths
    from .experiments.mmrec_config import load_yaml_file
    from .experiments.training_graphs import parse_set_items
    from .install import package_configs_dir
    from .model.presets import read_settings

    where = Path(folder)
    if not where.is_dir():
        raise DatasetError(f"{where}: dataset folder not found; check the folder path.")
    config = dict(_HOST_DEFAULTS)
    config.update(load_yaml_file(package_configs_dir() / "model" / "REARM.yaml"))
    config.update(parse_set_items(overrides))
    config["dataset"] = where.name

    def get(key: str, default: Any = None) -> Any:
        value = config.get(key)
        return default if value is None else value

    settings = read_settings(config, get, dataset_yaml={})
    paths = list(feature_paths(where, features).values())
    return get, settings, where, where / (inter or f"{where.name}.inter"), paths


def estimate(*, mmrec: Optional[str] = None, dataset: Optional[str] = None, folder: Optional[str] = None,
             inter: Optional[str] = None, features: Optional[Mapping[str, str]] = None,
             overrides: Sequence[str] = (), gpu_memory: Optional[float] = None) -> Dict[str, Any]:
    """Everything ``mmrec-rearm estimate`` prints, as a dict (bytes and seconds); ``overrides``:
    ``KEY=VALUE`` items as ``--set`` gives them (YAML values)."""
    from .graphs import GraphParams

    if mmrec is not None or dataset is not None:
        if mmrec is None or folder or inter or features:
            raise ConfigError("estimate: give --mmrec MMREC_DIR -d DATASET (files and settings then come from the "
                              "checkout's YAML files, as in training), or a DATASET_DIR with --inter / --feature; "
                              "not both.")
        get, settings, where, inter_path, paths = _checkout_inputs(mmrec, dataset, overrides)
    elif folder:
        get, settings, where, inter_path, paths = _folder_inputs(folder, inter, features, overrides)
    else:
        raise ConfigError("estimate needs a dataset folder, or --mmrec MMREC_DIR -d DATASET.")
    shape = dataset_shape(inter_path, paths)
    params = GraphParams.from_mapping(settings.graph)
    model = cm.ModelShape(
        embedding_size=settings.embedding_size, rank=settings.rank, use_meta=settings.use_meta,
        train_raw_features=settings.train_raw_features, attention=settings.attention,
        contrastive=settings.cl_loss_weight > 0,
        batch_size=int(get("train_batch_size", 2048)), eval_batch_size=int(get("eval_batch_size", 4096)),
        optimiser_states=_OPTIMISER_STATES.get(str(get("learner", "adam")).lower(), 2),
        user_knn_k=params.user_knn_k, item_knn_k=params.item_knn_k)
    result = {"dataset": str(where), "inter": str(inter_path), "shape": shape, "model": model, "params": params,
              "graphs": cm.graph_build_cost(shape, params), "cache_read": cm.cache_read_cost(shape, params),
              "parameters": cm.parameter_counts(shape, model),
              "activations": cm.activation_bytes(shape, model),
              "gpu": cm.training_memory(shape, model, "gpu"), "cpu": cm.training_memory(shape, model, "cpu"),
              "gpu_memory": gpu_memory, "advice": []}
    if gpu_memory:
        result["advice"] = _gpu_advice(shape, model, gpu_memory)
    return result


def _gpu_advice(shape: cm.DatasetShape, model: cm.ModelShape, limit: float) -> List[str]:
    from dataclasses import replace

    def peak(m: cm.ModelShape, batch: Optional[int] = None) -> float:
        return cm.training_memory(shape, m, "gpu", batch)["peak"]

    now = peak(model)
    if now <= limit:
        return [f"fits: predicted GPU peak {now / cm.GIB:.1f} GiB <= {limit / cm.GIB:.1f} GiB."]
    lines = [f"does not fit: predicted GPU peak {now / cm.GIB:.1f} GiB > {limit / cm.GIB:.1f} GiB."]
    frozen = replace(model, train_raw_features=False)
    candidates = [("train_raw_features: false", frozen)] if model.train_raw_features else []
    for label, m in candidates + [("as configured", model)]:
        batch = model.batch_size
        while batch > 64 and peak(m, batch) > limit:
            batch //= 2
        fits = peak(m, batch) <= limit
        if label != "as configured" and peak(m) <= limit:
            lines.append(f"set {label}: peak {peak(m) / cm.GIB:.1f} GiB (the raw tables stop taking gradients "
                         f"and Adam state: -{(now - peak(m)) / cm.GIB:.1f} GiB).")
            return lines
        if fits and batch < model.batch_size:
            lines.append(f"{label}, train_batch_size: {batch}: peak {peak(m, batch) / cm.GIB:.1f} GiB.")
            return lines
    act = cm.activation_bytes(shape, frozen)
    lines.append(f"even with train_raw_features: false and train_batch_size: 64 the peak is "
                 f"{peak(frozen, 64) / cm.GIB:.1f} GiB: REARM propagates over all {shape.n_users + shape.n_items:,} "
                 f"nodes at every step ({act['nodes'] / cm.GIB:.1f} GiB of activations). Use a larger GPU, a smaller "
                 "embedding_size, fewer modalities, or train on the CPU.")
    return lines


def _gib(value: float) -> str:
    return f"{value / cm.GIB:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_report(r: Dict[str, Any]) -> str:
    """The text ``mmrec-rearm estimate`` prints."""
    s, m = r["shape"], r["model"]
    lines = [f"dataset {r['dataset']}  users={s.n_users:,} items={s.n_items:,} train={s.n_train:,} "
             f"widths={','.join(str(w) for w in s.widths)}",
             "", "graph build (idle 2-core machine like the reference one; bench/results/scale.md):"]
    for name, g in r["graphs"].items():
        label = "whole build" if name == "build" else name
        lines.append(f"  {label:<18} ~{_duration(g['wall_s']):>8}  (CPU {_duration(g['cpu_s'])}, peak RSS "
                     f"{_gib(g['peak_bytes'])})  {g['note']}")
    lines.append(f"  later runs read the cached graphs in ~{_duration(r['cache_read']['wall_s'])}")
    p = r["parameters"]
    lines += ["", f"parameters: {p['total']:,} ({p['trainable']:,} trainable): "
              + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in p.items() if k not in ("total", "trainable"))]
    a = r["activations"]
    lines += ["", f"training memory (train_batch_size {m.batch_size}, embedding_size {m.embedding_size}, "
              f"train_raw_features {str(m.train_raw_features).lower()}):",
              f"  activations per step {_gib(a['total'])} (all nodes {_gib(a['nodes'])}, batch rows "
              f"{_gib(a['batch_rows'])}, InfoNCE logits {_gib(a['contrastive'])})"]
    for device in ("gpu", "cpu"):
        t = r[device]
        parts = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in t.items() if k != "peak")
        lines.append(f"  {device.upper()}: peak ~{_gib(t['peak'])} ({parts})")
    if r["advice"]:
        lines += ["", f"GPU with {_gib(r['gpu_memory'])}:"] + [f"  {line}" for line in r["advice"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def _cmd_estimate(args: argparse.Namespace) -> int:
    features = None
    if args.feature:
        from .cli import parse_pairs

        features = dict(parse_pairs(args.feature, "--feature", DatasetError))
    result = estimate(mmrec=args.mmrec, dataset=args.dataset, folder=args.dataset_dir, inter=args.inter,
                      features=features, overrides=args.set or (),
                      gpu_memory=parse_size(args.gpu_memory) if args.gpu_memory else None)
    print(format_report(result))
    return 0


def add_subcommand(sub) -> None:
    """Register ``estimate`` on the CLI's sub-parsers."""
    e = sub.add_parser("estimate", help="predict graph build time/memory, parameters and training memory",
                       description="Predict what a REARM run on a dataset will cost, before it starts.")
    e.add_argument("dataset_dir", metavar="DATASET_DIR", nargs="?", help="an MMRec dataset folder")
    e.add_argument("--mmrec", metavar="MMREC_DIR", help="an MMRec checkout with REARM installed")
    e.add_argument("-d", "--dataset", help="dataset name in that checkout")
    e.add_argument("--inter", metavar="FILE", help="interaction file (default: <dataset>.inter)")
    e.add_argument("--feature", metavar="NAME=FILE", action="extend", nargs="+", help="feature files, in order")
    e.add_argument("--set", metavar="KEY=VALUE", action="extend", nargs="+",
                   help="model / graph / MMRec key, e.g. train_batch_size=1024 train_raw_features=false")
    e.add_argument("--gpu-memory", metavar="SIZE", help="GPU memory to check against, e.g. 24GB")
    e.set_defaults(handler=_cmd_estimate)
