"""Which item features REARM uses: the configured feature files, checked before the host reads them,
and the selection by ``modalities``.

Slots, in order: 0 = ``vision_feature_file``, 1 = ``text_feature_file`` (both loaded by the host,
MMRec's ``GeneralRecommender``, into ``v_feat`` / ``t_feat``), 2.. = ``extra_feature_files`` (loaded
here; relative names stay inside the dataset folder, absolute ones may point anywhere). A slot is
configured when its name is not empty. ``modalities`` picks slots: ``all`` (every configured slot),
``first`` (0), ``second`` (1) or a list of indices.

:func:`check_feature_files` runs before the host's constructor: every selected file must exist and
be a plain numeric 2-D ``.npy`` array, otherwise a :class:`DatasetError` names the path and the YAML
key (a missing file used to drop its modality silently, and with both missing MMRec's constructor
stopped on ``assert ... 'Features all NONE'``; MMRec's loader also unpickles, which the check makes
unreachable for a pickle file). A missing file is accepted only in a slot that ``modalities``
explicitly leaves out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError, DatasetError
from ..features import check_npy_file, load_feature_file
from ..host import config_value, dataset_folder

__all__ = ["Slot", "feature_slots", "check_feature_files", "select_features", "WHERE_FEATURES_COME_FROM"]

WHERE_FEATURES_COME_FROM = (
    "REARM needs item features: MMRec's data/README.md links the Baby, Sports and Elec folders with their "
    "image_feat.npy and text_feat.npy (Google Drive); `mmrec-rearm quickstart --mmrec <checkout>` writes a small "
    "synthetic dataset with features to try things")


@dataclass(frozen=True)
class Slot:
    index: int
    key: str              # the configuration key that names the file
    name: Optional[str]   # the configured file name; None / "" = not configured
    path: Optional[str]   # where the file is looked for

    @property
    def configured(self) -> bool:
        return bool(self.name)

    @property
    def label(self) -> str:
        return Path(str(self.name)).stem


def feature_slots(config: Any, extra_files: Sequence[str]) -> List[Slot]:
    """The feature slots of ``config`` in order (see the module doc)."""
    folder = dataset_folder(config)
    slots = []
    for index, key in enumerate(("vision_feature_file", "text_feature_file")):
        name = config_value(config, key)
        name = str(name) if name else None
        slots.append(Slot(index, key, name, os.path.join(folder, name) if name else None))
    for offset, name in enumerate(extra_files):
        key = f"extra_feature_files[{offset}]"
        if not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise DatasetError(f"{os.path.join(folder, name)}: {key} = {name!r} leads out of the dataset folder "
                               f"{folder}; relative names stay inside it. Give an absolute path for a file elsewhere.")
        slots.append(Slot(2 + offset, key, name, name if os.path.isabs(name) else os.path.join(folder, name)))
    return slots


def _picked(modalities: Any, slots: List[Slot]) -> List[int]:
    if modalities == "all":
        return [slot.index for slot in slots if slot.configured]
    pick = {"first": [0], "second": [1]}.get(modalities, modalities)
    out = list(pick)
    bad = [i for i in out if i >= len(slots)]
    if bad:
        raise ConfigError(f"REARM config key 'modalities' = {modalities!r} asks for modality {bad[0]}, but only "
                          f"{len(slots)} are available: {[s.key for s in slots]}.")
    unnamed = [slots[i] for i in out if not slots[i].configured]
    if unnamed:
        raise ConfigError(f"REARM config key 'modalities' = {modalities!r} selects {unnamed[0].key}, but the "
                          "dataset configuration names no file for it.")
    return out


def check_feature_files(config: Any, modalities: Any, extra_files: Sequence[str]) -> List[int]:
    """Check the selected feature files before anything loads them -> the selected slot indices.

    Raises :class:`DatasetError` naming every selected file that is missing (with its key) or not a
    plain numeric 2-D ``.npy``, and :class:`ConfigError` for a selection that does not fit.
    """
    slots = feature_slots(config, extra_files)
    host_loads = not config_value(config, "end2end", False) and config_value(config, "is_multimodal_model", True)
    picked = _picked(modalities, slots)
    if not picked:
        raise DatasetError(f"{dataset_folder(config)}: the dataset configuration names no feature file "
                           f"(vision_feature_file, text_feature_file are empty). {WHERE_FEATURES_COME_FROM}.")
    missing = [slots[i] for i in picked if not os.path.isfile(slots[i].path)]
    if missing:
        listed = "; ".join(f"{slot.path} ({slot.key})" for slot in missing)
        explicit = "" if modalities != "all" else (
            " To train on the present files only, select them with `modalities` (e.g. modalities: first).")
        raise DatasetError(f"feature file(s) not found: {listed}. Fix the name in the dataset configuration "
                           f"(src/configs/dataset/<dataset>.yaml) or put the file there.{explicit} "
                           f"{WHERE_FEATURES_COME_FROM}.")
    for i in picked:
        if i >= 2 or host_loads:
            check_npy_file(slots[i].path, f"feature file of {slots[i].key}")
    return picked


def select_features(config: Any, modalities: Any, extra_files: Sequence[str], v_feat: Optional[torch.Tensor],
                    t_feat: Optional[torch.Tensor], n_items: int) -> Tuple[List[str], List[torch.Tensor]]:
    """The selected modalities in order -> names (file stems, made distinct) and (n_items, d_m)
    float tensors: the host's ``v_feat`` / ``t_feat`` for slots 0 / 1, the extra files loaded here."""
    slots = feature_slots(config, extra_files)
    picked = _picked(modalities, slots)
    features: List[Tuple[str, torch.Tensor]] = []
    for i in picked:
        slot = slots[i]
        if i < 2:
            tensor = (v_feat, t_feat)[i]
            if tensor is None:
                raise DatasetError(f"no item features in {dataset_folder(config)}: the host loaded nothing for "
                                   f"{slot.key}={slot.name!r} (end2end on, or is_multimodal_model off?). "
                                   f"{WHERE_FEATURES_COME_FROM}.")
        else:
            tensor = torch.from_numpy(load_feature_file(slot.label, slot.path, n_items))
        if tensor.dim() != 2 or tensor.shape[0] != n_items:
            raise DatasetError(f"{slot.path}: feature '{slot.label}' ({slot.key}) has shape {tuple(tensor.shape)}, "
                               f"expected (n_items={n_items}, d).")
        features.append((slot.label, tensor.float()))
    names = [name for name, _ in features]
    if len(set(names)) != len(names):  # the fingerprint and logs need distinct names
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names, [tensor for _, tensor in features]
