"""The inputs of REARM's homogeneous graphs exactly as a training run in an MMRec checkout sees
them, without MMRec or torch: ``mmrec-rearm graphs --mmrec DIR -d DATASET``.

MMRec merges ``configs/overall.yaml``, the dataset YAML and ``REARM.yaml`` (later wins); REARM then
fills its dataset-dependent keys (:func:`~mmrec_rearm.model.presets.read_settings`), takes its
modalities by the rule of :mod:`mmrec_rearm.modalities` (TikTok: ``image_feat`` and
``audio_feat``), builds the graphs from the training split and caches them where
``rearm_cache_dir`` (a path relative to MMRec's ``src/``, where training runs), else
``$MMREC_REARM_CACHE_DIR``, else the dataset folder (when writable) says. Built here, the
graphs have the fingerprint the training run computes, so its first epoch starts from the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Union

from ..data import TrainingData, read_dataset
from ..errors import ConfigError
from ..graphs import GraphParams
from ..modalities import check_feature_files, selected_modalities
from ..model.presets import read_dataset_yaml, read_settings
from .mmrec_config import dataset_folder, merged_config, mmrec_src, parse_yaml_text

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["TrainingGraphInputs", "training_graph_inputs"]


@dataclass
class TrainingGraphInputs:
    data: TrainingData
    params: GraphParams
    cache_dir: Any                 # as load_or_build takes it: a folder, None (default rule) or False
    modalities: List[str]          # names, in the model's order
    sources: List[str]             # the configuration files read, in MMRec's order


def _overrides(items: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (a REARM configuration key, YAML value).")
        out[key.strip()] = parse_yaml_text(text, f"--set {item!r}") if text.strip() else None
    return out


def training_graph_inputs(mmrec_dir: PathLike, dataset: str, overrides: Sequence[str] = (),
                          model: str = "REARM") -> TrainingGraphInputs:
    """What :func:`~mmrec_rearm.cache.load_or_build` needs to build (or find) the graphs a
    ``model`` run on ``dataset`` in the checkout ``mmrec_dir`` uses; ``overrides``: ``KEY=VALUE``
    settings as a run's ``--set`` gives them."""
    src = mmrec_src(mmrec_dir)
    config = merged_config(src, model, dataset)
    config.update(_overrides(overrides))
    config["dataset"] = dataset
    get = config.get
    folder = dataset_folder(src, config, dataset)
    settings = read_settings(config, lambda key, default=None: default if get(key) is None else get(key),
                             dataset_yaml=read_dataset_yaml(dataset, src / "configs"))
    check_feature_files(get, folder, settings.modalities, settings.extra_feature_files, dataset=dataset,
                        checkout=src.parent)
    found = selected_modalities(get, folder, settings.modalities, settings.extra_feature_files)
    inter = str(get("inter_file_name") or f"{dataset}.inter")
    data = read_dataset(folder, inter_file=inter, features={m.name: m.path for m in found})
    cache_dir = settings.cache_dir
    if isinstance(cache_dir, (str, os.PathLike)) and not os.path.isabs(os.path.expanduser(str(cache_dir))):
        cache_dir = str(src / cache_dir)  # training resolves it in MMRec's src/
    files = [src / "configs" / "overall.yaml", src / "configs" / "dataset" / f"{dataset}.yaml",
             src / "configs" / "model" / f"{model}.yaml"]
    return TrainingGraphInputs(data, GraphParams.from_mapping(settings.graph), cache_dir,
                               [m.name for m in found], [str(p) for p in files if p.is_file()])
