"""``mmrec-rearm estimate``: what a REARM run on a dataset will cost, before it starts.

    mmrec-rearm estimate --mmrec MMREC_DIR -d DATASET [--set key=value ...] [--gpu-memory 24GB]
    mmrec-rearm estimate DATASET_DIR [--inter FILE] [--feature NAME=FILE ...] [--set ...] [--gpu-memory ...]

With ``--mmrec`` the settings are the ones MMRec would use (overall, dataset and REARM YAML of the
checkout, then REARM's presets); with a dataset folder, this package's REARM.yaml and MMRec's
defaults (batch 2048). ``--set`` overrides any model or graph key. Only counts are read: the
.inter file and the .npy headers (never the feature values). The numbers come from
:mod:`mmrec_rearm.costmodel`. No torch and no MMRec are imported.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import costmodel as cm
from .errors import ConfigError, DatasetError

__all__ = ["estimate", "format_report", "parse_size", "dataset_shape", "add_subcommand"]

#: MMRec's own defaults (src/configs/overall.yaml) for a dataset folder without a checkout.
_HOST_DEFAULTS = {"train_batch_size": 2048, "eval_batch_size": 4096, "learner": "adam",
                  "inter_file_name": None, "vision_feature_file": "image_feat.npy",
                  "text_feature_file": "text_feat.npy"}
_OPTIMISER_STATES = {"adam": 2, "adamw": 2, "adagrad": 1, "rmsprop": 1, "sgd": 0}


def parse_size(text: str) -> float:
    """``"24GB"``, ``"24GiB"``, ``"24G"``, ``"80"`` (GiB) or ``"512MB"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise ConfigError(f"--gpu-memory {text!r}: expected a size such as 24GB, 40GiB or 80 (GiB).")
    unit = match.group(2) or "g"
    return float(match.group(1)) * 1024.0 ** "kmgt".index(unit) * 1024.0


def _npy_shape(path: Path) -> Tuple[int, ...]:
    """The shape in an .npy file's header (the array itself is not read)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc}); save the features with np.save.") from exc
    return tuple(int(s) for s in header[0])


def dataset_shape(inter_path: Path, feature_paths: Sequence[Path]) -> cm.DatasetShape:
    """Counts of a dataset: ids and training degrees from the .inter file, widths from the .npy headers."""
    from .data import read_interactions

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
        shape = _npy_shape(path)
        if len(shape) != 2 or shape[0] != n_items:
            raise DatasetError(f"{path}: features of shape {shape}, expected ({n_items}, d) "
                               f"(n_items = max itemID + 1 of {inter_path.name}).")
        widths.append(shape[1])
    if not widths:
        raise DatasetError(f"{inter_path.parent}: no feature file found; REARM needs at least one modality.")
    return cm.DatasetShape(n_users=n_users, n_items=n_items, n_train=int(pairs.size), widths=tuple(widths),
                           item_degree_sq=float(item_deg @ item_deg), user_degree_sq=float(user_deg @ user_deg),
                           n_rows=int(parsed.users.size))


def _first(value: Any) -> Any:
    """A grid value (list) -> its first entry, as MMRec's first run would use."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _settings(config: Mapping[str, Any], dataset_yaml: Mapping[str, Any]):
    from .model.presets import read_settings

    def get(key, default=None):
        value = config.get(key)
        if key not in ("u_modal_weights", "i_modal_weights", "learning_rate_scheduler", "extra_feature_files",
                       "modalities"):
            value = _first(value)
        return default if value is None else value

    return read_settings(config, get, dataset_yaml=dataset_yaml), get


def _feature_files(folder: Path, get, explicit: Optional[Mapping[str, str]], modalities) -> List[Path]:
    if explicit:
        paths = [Path(p) if Path(p).is_absolute() else folder / p for p in explicit.values()]
    else:
        paths = [folder / str(name) for name in (get("vision_feature_file"), get("text_feature_file")) if name]
        paths = [p for p in paths if p.is_file()]
        extra = get("extra_feature_files", None) or ()
        paths += [Path(p) if Path(p).is_absolute() else folder / p for p in ([extra] if isinstance(extra, str) else extra)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: feature file not found; check the feature file names.")
    pick = {"all": list(range(len(paths))), "first": [0], "second": [1]}.get(modalities, modalities)
    if any(i >= len(paths) for i in pick):
        raise ConfigError(f"modalities={modalities!r} asks for more modalities than the {len(paths)} found.")
    return [paths[i] for i in pick]


def estimate(*, mmrec: Optional[str] = None, dataset: Optional[str] = None, folder: Optional[str] = None,
             inter: Optional[str] = None, features: Optional[Mapping[str, str]] = None,
             overrides: Optional[Mapping[str, Any]] = None, gpu_memory: Optional[float] = None) -> Dict[str, Any]:
    """Everything ``mmrec-rearm estimate`` prints, as a dict (bytes and seconds)."""
    from .graphs import GraphParams

    overrides = dict(overrides or {})
    if mmrec is not None:
        from .experiments.mmrec_config import dataset_folder, dataset_yaml_path, load_yaml_file, merged_config, mmrec_src

        if not dataset:
            raise ConfigError("estimate --mmrec needs -d DATASET (a dataset of that checkout).")
        src = mmrec_src(mmrec)
        config = merged_config(src, "REARM", dataset)
        yaml_path = dataset_yaml_path(src, dataset)
        dataset_yaml = load_yaml_file(yaml_path) if yaml_path.is_file() else {}
        where = dataset_folder(src, config, dataset)
    else:
        from .experiments.mmrec_config import load_yaml_file
        from .install import package_configs_dir

        if not folder:
            raise ConfigError("estimate needs a dataset folder, or --mmrec DIR -d DATASET.")
        where = Path(folder)
        dataset = where.name
        config = dict(_HOST_DEFAULTS)
        config.update(load_yaml_file(package_configs_dir() / "model" / "REARM.yaml"))
        dataset_yaml = {}
    config = dict(config, dataset=dataset, **overrides)
    settings, get = _settings(config, dataset_yaml)
    if not where.is_dir():
        raise DatasetError(f"{where}: dataset folder not found; check -d / the folder path.")
    inter_path = where / (inter or get("inter_file_name") or f"{dataset}.inter")
    shape = dataset_shape(inter_path, _feature_files(where, get, features, settings.modalities))
    params = GraphParams.from_mapping(settings.graph)
    model = cm.ModelShape(
        embedding_size=settings.embedding_size, rank=settings.rank, use_meta=settings.use_meta,
        train_raw_features=settings.train_raw_features, attention=settings.attention,
        contrastive=settings.cl_loss_weight > 0, batch_size=int(get("train_batch_size", 2048)),
        eval_batch_size=int(get("eval_batch_size", 4096)),
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
    from .cli import parse_value

    overrides = {}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE.")
        overrides[key.strip()] = parse_value(value)
    features = None
    if args.feature:
        features = dict(item.split("=", 1) for item in args.feature if "=" in item)
    if args.mmrec is None and args.dataset_dir is None:
        raise ConfigError("estimate needs a dataset folder, or --mmrec MMREC_DIR -d DATASET.")
    result = estimate(mmrec=args.mmrec, dataset=args.dataset, folder=args.dataset_dir, inter=args.inter,
                      features=features, overrides=overrides,
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
