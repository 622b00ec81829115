"""Which item-feature files a run uses, in which order and under which names, their check before
anything loads them, and where real features come from when a dataset folder has none.

One owner for the rule that REARM's training (:mod:`mmrec_rearm.model.rearm`), the ``graphs
--mmrec`` command (:mod:`mmrec_rearm.experiments.training_graphs`) and the pre-run checks of every
training command (:mod:`mmrec_rearm.experiments.prepare`) follow, so they fingerprint and build
exactly the same graphs.

Slots, in order: 0 = ``vision_feature_file``, 1 = ``text_feature_file`` (MMRec's host loads both,
into ``v_feat`` / ``t_feat``), 2.. = REARM's ``extra_feature_files`` (relative names stay inside the
dataset folder, absolute ones may point anywhere). A slot is configured when its name is not
empty; a modality is named after its file (``audio_feat.npy`` -> ``audio_feat``). REARM's
``modalities`` key picks slots: ``all`` (every configured slot), ``first`` (0), ``second`` (1) or a
list of indices.

:func:`check_feature_files` (REARM) runs before the host's constructor: every selected file must
exist and be a plain numeric 2-D ``.npy`` array, otherwise a :class:`DatasetError` names the path
and the YAML key (a missing file used to drop its modality silently, and with both missing MMRec
stopped on ``assert ... 'Features all NONE'``; MMRec's loader also unpickles, which the header check
makes unreachable for a pickle file). A missing file is accepted only in a slot that ``modalities``
explicitly leaves out. :func:`require_features` is the looser rule of MMRec's other multimodal
models: at least one slot file exists.

Pure Python and numpy (file headers): no torch, no MMRec.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from .errors import ConfigError, DatasetError
from .features import check_npy_file
from .hints import command

__all__ = ["SLOT_KEYS", "MMREC_DATA_URL", "WHERE_FEATURES_COME_FROM", "Slot", "Modality", "feature_slots",
           "picked_slots", "check_feature_files", "selected_modalities", "features_help", "require_features"]

#: MMRec's feature slots, in the order its models read them.
SLOT_KEYS = ("vision_feature_file", "text_feature_file")
#: MMRec's documented source of the Amazon datasets with features (its data/README.md).
MMREC_DATA_URL = "https://drive.google.com/drive/folders/13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
WHERE_FEATURES_COME_FROM = (
    "Real features for Amazon Baby, Sports and Elec (image_feat.npy, text_feat.npy) come with MMRec's data "
    f"download, documented in MMRec's data/README.md: {MMREC_DATA_URL} ; mmrec-rearm quickstart (with --mmrec "
    "and your MMRec folder) writes a small synthetic dataset with features to try things")
#: ``get(key)`` -> one configuration value (None when absent).
Getter = Callable[[str], Any]
PathLike = Union[str, "os.PathLike[str]"]


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


@dataclass(frozen=True)
class Modality:
    """One selected modality: its (distinct) name, file and slot."""
    name: str
    path: str
    slot: Slot


def _extra_files(get: Getter, extra_files: Optional[Sequence[str]]) -> List[str]:
    if extra_files is None:
        extra_files = get("extra_feature_files") or ()
    return [extra_files] if isinstance(extra_files, str) else [str(name) for name in extra_files]


def feature_slots(get: Getter, folder: PathLike, extra_files: Optional[Sequence[str]] = None) -> List[Slot]:
    """The feature slots in order (see the module doc); ``extra_files`` default: the
    ``extra_feature_files`` key. A relative extra name that leads out of ``folder`` is an error."""
    folder = str(folder)
    slots = []
    for index, key in enumerate(SLOT_KEYS):
        name = get(key)
        name = str(name) if name else None
        slots.append(Slot(index, key, name, os.path.join(folder, name) if name else None))
    for offset, name in enumerate(_extra_files(get, extra_files)):
        key = f"extra_feature_files[{offset}]"
        if not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise DatasetError(f"{os.path.join(folder, name)}: {key} = {name!r} leads out of the dataset folder "
                               f"{folder}; relative names stay inside it. Give an absolute path for a file elsewhere.")
        slots.append(Slot(2 + offset, key, name, name if os.path.isabs(name) else os.path.join(folder, name)))
    return slots


def picked_slots(modalities: Any, slots: Sequence[Slot]) -> List[int]:
    """Slot indices chosen by REARM's ``modalities`` key (``all``, ``first``, ``second`` or indices)."""
    if modalities == "all":
        return [slot.index for slot in slots if slot.configured]
    out = list({"first": [0], "second": [1]}.get(modalities, modalities))
    bad = [i for i in out if i >= len(slots)]
    if bad:
        raise ConfigError(f"REARM config key 'modalities' = {modalities!r} asks for modality {bad[0]}, but only "
                          f"{len(slots)} are available: {[s.key for s in slots]}.")
    unnamed = [slots[i] for i in out if not slots[i].configured]
    if unnamed:
        raise ConfigError(f"REARM config key 'modalities' = {modalities!r} selects {unnamed[0].key}, but the "
                          "dataset configuration names no file for it.")
    return out


def check_feature_files(get: Getter, folder: PathLike, modalities: Any = "all",
                        extra_files: Optional[Sequence[str]] = None, *, dataset: str = "",
                        checkout: Optional[PathLike] = None) -> List[int]:
    """REARM's check of its selected feature files before anything loads them -> the slot indices.

    Raises :class:`DatasetError` naming every selected file that is missing (with its key; when
    none of the slot files exists, also where MMRec's real features come from and where they go)
    or not a plain numeric 2-D ``.npy``, and :class:`ConfigError` for a selection that does not fit.
    """
    slots = feature_slots(get, folder, extra_files)
    host_loads = not get("end2end") and get("is_multimodal_model") is not False
    picked = picked_slots(modalities, slots)
    if not picked:
        raise DatasetError(f"{folder}: the dataset configuration names no feature file "
                           f"(vision_feature_file, text_feature_file are empty). {WHERE_FEATURES_COME_FROM}.")
    missing = [slots[i] for i in picked if not os.path.isfile(str(slots[i].path))]
    if missing:
        listed = "; ".join(f"{slot.path} ({slot.key})" for slot in missing)
        explicit = "" if modalities != "all" else (
            " To train on the present files only, select them with `modalities` (e.g. modalities: first).")
        named = [s for s in slots[:2] if s.configured]
        where = (features_help(folder, dataset or Path(str(folder)).name, [str(s.name) for s in named], checkout)
                 if named and not any(os.path.isfile(str(s.path)) for s in named) else WHERE_FEATURES_COME_FROM + ".")
        raise DatasetError(f"feature file(s) not found: {listed}. Fix the name in the dataset configuration "
                           f"(src/configs/dataset/<dataset>.yaml) or put the file there.{explicit} {where}")
    for i in picked:
        if i >= 2 or host_loads:
            check_npy_file(str(slots[i].path), f"feature file of {slots[i].key}")
    return picked


def selected_modalities(get: Getter, folder: PathLike, modalities: Any = "all",
                        extra_files: Optional[Sequence[str]] = None) -> List[Modality]:
    """The selected modalities in order, named after their files and made distinct (the graph
    fingerprint and the logs need distinct names). Existence is :func:`check_feature_files`' job."""
    slots = feature_slots(get, folder, extra_files)
    chosen = [slots[i] for i in picked_slots(modalities, slots)]
    names = [slot.label for slot in chosen]
    if len(set(names)) != len(names):
        names = [f"{name}#{i}" for i, name in enumerate(names)]
    return [Modality(name, str(slot.path), slot) for name, slot in zip(names, chosen)]


def features_help(folder: PathLike, dataset: str, files: Sequence[str], checkout: Optional[PathLike] = None) -> str:
    """The message for a dataset folder without any of ``files``: where MMRec's real features come
    from and where to put them."""
    folder = Path(folder)
    wanted = " and ".join(str(folder / f) for f in files) if files else f"{folder}/<name>_feat.npy"
    lines = [f"no item features for '{dataset}': {wanted} not found.",
             "Real features for Amazon Baby, Sports and Elec (image_feat.npy: 4096-d CNN, text_feat.npy: "
             "384-d Sentence-Transformers) come with MMRec's data download, documented in MMRec's "
             f"data/README.md: {MMREC_DATA_URL} .",
             f"Download the '{dataset}' folder from there and place its files so that {wanted} exist "
             "(next to the .inter file), or point --data-dir at a folder that holds them."]
    if checkout is not None:
        lines.append(f"To try everything without real data first: `{command('quickstart', '--mmrec', checkout)}` "
                     "(a small synthetic dataset).")
    return " ".join(lines)


def require_features(get: Getter, folder: PathLike, dataset: str, checkout: Optional[PathLike] = None,
                     extra: bool = True) -> None:
    """MMRec's rule for its multimodal models: DatasetError (with :func:`features_help`) when none of
    the slot files exists in ``folder`` and, with ``extra``, no ``extra_feature_files`` is configured."""
    slots = [str(get(key)) for key in SLOT_KEYS if get(key)]
    if any(os.path.isfile(os.path.join(str(folder), name)) for name in slots):
        return
    if extra and get("extra_feature_files"):
        return
    raise DatasetError(features_help(folder, dataset, slots, checkout))
