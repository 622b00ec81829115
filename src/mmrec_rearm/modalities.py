"""Which item-feature files a run uses, in which order and under which names, and where real
features come from when a dataset folder has none.

One owner for the rule that REARM's training (:mod:`mmrec_rearm.model.rearm`) and the ``graphs``
command both follow, so both fingerprint and build exactly the same graphs: MMRec's two slots
first (``vision_feature_file``, then ``text_feature_file``; a slot counts when its file exists in
the dataset folder, as MMRec loads it), then each of REARM's ``extra_feature_files``; a modality is
named after its file (``audio_feat.npy`` -> ``audio_feat``); REARM's ``modalities`` key then picks
among them. Pure Python: no torch, no MMRec.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from .errors import ConfigError, DatasetError
from .hints import command

__all__ = ["SLOT_KEYS", "MMREC_DATA_URL", "Modality", "available_modalities", "pick", "features_help",
           "require_features"]

#: MMRec's feature slots, in the order its models read them.
SLOT_KEYS = ("vision_feature_file", "text_feature_file")
#: MMRec's documented source of the Amazon datasets with features (its data/README.md).
MMREC_DATA_URL = "https://drive.google.com/drive/folders/13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
Getter = Callable[[str], Any]


class Modality(Tuple[str, str, Optional[str]]):
    """(name, path, slot key or None for an extra file)."""

    @property
    def name(self) -> str:
        return self[0]

    @property
    def path(self) -> str:
        return self[1]

    @property
    def slot(self) -> Optional[str]:
        return self[2]


def available_modalities(get: Getter, folder: Union[str, os.PathLike]) -> List[Modality]:
    """Every modality REARM can use in ``folder``, in order (see the module doc). ``get(key)``
    reads one configuration key (None when absent). A missing extra file is a DatasetError."""
    folder = str(folder)
    found: List[Modality] = []
    for key in SLOT_KEYS:
        name = get(key)
        if name and os.path.isfile(os.path.join(folder, str(name))):
            found.append(Modality((Path(str(name)).stem, os.path.join(folder, str(name)), key)))
    extra = get("extra_feature_files") or ()
    for name in ([extra] if isinstance(extra, str) else list(extra)):
        path = name if os.path.isabs(name) else os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: extra feature file not found (extra_feature_files); "
                               "put the .npy file in the dataset folder or remove it from the list.")
        found.append(Modality((Path(path).stem, path, None)))
    names = [m.name for m in found]
    if len(set(names)) != len(names):  # the fingerprint and the logs need distinct names
        found = [Modality((f"{m.name}#{i}", m.path, m.slot)) for i, m in enumerate(found)]
    return found


def pick(selection: Union[str, Sequence[int]], names: Sequence[str]) -> List[int]:
    """Indices chosen by REARM's ``modalities`` key (``all``, ``first``, ``second`` or indices)."""
    chosen = {"all": list(range(len(names))), "first": [0], "second": [1]}.get(selection, selection)  # type: ignore[arg-type]
    bad = [i for i in chosen if i >= len(names)]
    if bad:
        raise ConfigError(f"REARM config key 'modalities' = {selection!r} asks for modality {bad[0]}, but "
                          f"only {len(names)} are available: {list(names)}.")
    return list(chosen)


def features_help(folder: Union[str, os.PathLike], dataset: str, files: Sequence[str],
                  checkout: Optional[Union[str, os.PathLike]] = None) -> str:
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


def require_features(get: Getter, folder: Union[str, os.PathLike], dataset: str,
                     checkout: Optional[Union[str, os.PathLike]] = None, extra: bool = True) -> None:
    """DatasetError (with :func:`features_help`) when none of the slot files exists in ``folder``
    and, with ``extra``, no ``extra_feature_files`` entry is configured either."""
    slots = [str(get(key)) for key in SLOT_KEYS if get(key)]
    if any(os.path.isfile(os.path.join(str(folder), name)) for name in slots):
        return
    if extra and get("extra_feature_files"):
        return
    raise DatasetError(features_help(folder, dataset, slots, checkout))
