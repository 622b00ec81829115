"""Dataset preparation for MMRec: official REARM splits -> ``.inter``, and dataset YAML files.

The official REARM repository ships each dataset as ``train.npy``, ``valid.npy`` and
``test.npy``: int64 arrays of shape ``(2, n)``, row 0 user ids, row 1 item ids, both 0-based
(the official loader only adds ``n_users`` to item ids after loading). MMRec wants one
tab-separated ``<name>.inter`` with a header and an ``x_label`` column (0 train, 1 valid, 2 test).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..errors import DatasetError
from .mmrec_config import dataset_yaml_path, mmrec_src

PathLike = Union[str, "os.PathLike[str]"]

from ..atomic import write_text
from ..install import MARKER, place_files

SPLIT_FILES = (("train.npy", 0), ("valid.npy", 1), ("test.npy", 2))
INTER_HEADER = "userID\titemID\tx_label"


def _load_pairs(path: Path) -> np.ndarray:
    """``(n, 2)`` int64 (user, item) rows of one official split file."""
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found; the folder needs train.npy, valid.npy and test.npy.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{path}: holds pickled objects, not a plain integer array ({exc}); "
                           "re-save it with np.save(path, array) from an int array.") from exc
    if array.ndim != 2 or 2 not in array.shape:
        raise DatasetError(f"{path}: shape {array.shape}; expected (2, n) rows of [user ids, item ids].")
    pairs = array if array.shape[0] != 2 else array.T  # (2, n) is the official layout; (n, 2) also read
    if pairs.size and not np.issubdtype(pairs.dtype, np.integer):
        if not (np.issubdtype(pairs.dtype, np.floating) and np.all(np.mod(pairs, 1) == 0)):
            raise DatasetError(f"{path}: dtype {pairs.dtype} with non-integer ids; ids must be integers.")
    pairs = pairs.astype(np.int64)
    if pairs.size and pairs.min() < 0:
        row = int(np.argmin(pairs.min(axis=1)))
        raise DatasetError(f"{path}: entry {row} has a negative id {pairs[row].tolist()}; ids must be >= 0.")
    return pairs


def inter_text(splits: Dict[int, np.ndarray]) -> str:
    """The ``.inter`` file content for ``{x_label: (n, 2) pairs}`` (train rows first)."""
    lines = [INTER_HEADER]
    for label in sorted(splits):
        pairs = splits[label]
        lines.extend(f"{u}\t{i}\t{label}" for u, i in pairs.tolist())
    return "\n".join(lines) + "\n"


def convert_official_splits(folder: PathLike, *, name: Optional[str] = None, out_dir: Optional[PathLike] = None,
                            overwrite: bool = False) -> Path:
    """Write ``<out_dir>/<name>.inter`` from ``<folder>/{train,valid,test}.npy``.

    ``name`` defaults to the folder's name, ``out_dir`` to ``folder``. An existing different
    file is only replaced with ``overwrite=True``. Returns the ``.inter`` path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; pass the folder holding train.npy, valid.npy, test.npy.")
    name = name or folder.resolve().name
    target = Path(out_dir or folder) / f"{name}.inter"
    splits = {label: _load_pairs(folder / file) for file, label in SPLIT_FILES}
    if splits[0].shape[0] == 0:
        raise DatasetError(f"{folder / 'train.npy'}: no training pairs; the training split cannot be empty.")
    text = inter_text(splits)
    if target.exists():
        if target.read_text(encoding="utf-8") == text:
            return target
        if not overwrite:
            raise DatasetError(f"{target}: exists with different content; pass overwrite=True "
                               "(--overwrite) to replace it, or choose another --name.")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, text, what="the interaction file")
    return target


def detect_feature_files(folder: PathLike) -> Tuple[Optional[str], Optional[str], str]:
    """(vision file, text file, note) for MMRec's two feature slots, from ``*_feat.npy`` in ``folder``.

    ``image_feat.npy`` fills the vision slot and ``text_feat.npy`` the text slot. A dataset with
    another modality (TikTok's ``audio_feat.npy``) has it placed in a free slot, because MMRec's
    baselines only ever load these two files; ``note`` says so.
    """
    folder = Path(folder)
    present = sorted(p.name for p in folder.glob("*_feat.npy"))
    vision = "image_feat.npy" if "image_feat.npy" in present else None
    text = "text_feat.npy" if "text_feat.npy" in present else None
    others = [f for f in present if f not in ("image_feat.npy", "text_feat.npy")]
    notes = []
    for extra in others:
        if text is None:
            text, slot = extra, "text_feature_file"
        elif vision is None:
            vision, slot = extra, "vision_feature_file"
        else:
            notes.append(f"{extra} is not used: MMRec has only two feature slots")
            continue
        notes.append(f"{extra} goes into MMRec's {slot} slot (MMRec has no slot of its own for it)")
    if vision is None and text is None:
        notes.append(f"no *_feat.npy in {folder}: multimodal models will fail ('Features all NONE')")
    return vision, text, "; ".join(notes)


def dataset_yaml_text(name: str, *, inter_file: Optional[str] = None, vision_feature_file: Optional[str] = "image_feat.npy",
                      text_feature_file: Optional[str] = "text_feat.npy",
                      user_graph_dict_file: str = "user_graph_dict.npy", note: str = "") -> str:
    lines = [MARKER,
             f"# MMRec settings of dataset '{name}'." + (f" {note}." if note else ""),
             "USER_ID_FIELD: userID",
             "ITEM_ID_FIELD: itemID",
             "TIME_FIELD: timestamp",
             "filter_out_cod_start_users: True",
             f"inter_file_name: '{inter_file or name + '.inter'}'"]
    # MMRec joins each slot's name into a path, so an unused slot gets '' (never None): the joined path is
    # the folder itself, no file, and the slot stays empty. A name of a file that does not exist would
    # make REARM stop with an error naming it.
    lines.append(f"vision_feature_file: '{vision_feature_file or ''}'")
    lines.append(f"text_feature_file: '{text_feature_file or ''}'")
    lines += [f"user_graph_dict_file: '{user_graph_dict_file}'", 'field_separator: "\\t"']
    return "\n".join(lines) + "\n"


def write_dataset_yaml(mmrec_dir: PathLike, name: str, *, inter_file: Optional[str] = None,
                       vision_feature_file: Optional[str] = "image_feat.npy",
                       text_feature_file: Optional[str] = "text_feat.npy",
                       user_graph_dict_file: str = "user_graph_dict.npy", note: str = "",
                       overwrite: bool = False) -> Path:
    """Write ``src/configs/dataset/<name>.yaml`` into an MMRec checkout, recorded in its install ledger.

    ``mmrec-rearm uninstall`` removes it while it is unchanged. A YAML that is not ours (or that the
    user changed) is never touched; one of ours with different content needs ``overwrite=True``.
    Returns the path.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DatasetError(f"dataset name {name!r}: must be a plain folder name (no slashes).")
    src = mmrec_src(mmrec_dir)
    path = dataset_yaml_path(src, name)
    text = dataset_yaml_text(name, inter_file=inter_file, vision_feature_file=vision_feature_file,
                             text_feature_file=text_feature_file, user_graph_dict_file=user_graph_dict_file,
                             note=note)
    place_files(src.parent, {path: text}, update=overwrite, report=None)
    return path
