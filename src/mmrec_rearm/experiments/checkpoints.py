"""Reading the checkpoints the runner writes and rebuilding REARM from one, without MMRec's trainer.

A checkpoint (:func:`.runner_checkpoint.checkpoint_payload`, format :mod:`.checkpoint_format`) holds the weights
of the best validation epoch, the full MMRec configuration with REARM's dataset-dependent values
already resolved, the dataset folder and the fingerprint of the data the model was trained on, the
model name, the epoch and the valid / test metrics of that epoch.

Loading never runs code from the file: ``torch.load(..., weights_only=True)`` only, with no fallback
of any kind (a torch without ``weights_only`` is refused). Rebuilding reads the training split of
the dataset's ``.inter`` file, gives the model the two things it reads from MMRec's data loader (the
training matrix, user and item counts; :class:`~mmrec_rearm.host.ArrayDataLoader`), checks that the
model's data fingerprint equals the checkpoint's (so a dataset with the same counts but other
interactions, features or ids is refused), and loads the weights. The homogeneous graphs are rebuilt
or read from the graph cache, as in training.

torch and the model are imported only when a function here is called.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import scipy.sparse as sp

from ..errors import CheckpointError, DatasetError
from . import checkpoint_format

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: Models that can be rebuilt from a checkpoint (MMRec name -> (module, class) of our package).
REBUILDABLE = {"REARM": ("mmrec_rearm.model.rearm", "REARM")}


def checkpoint_file(results_dir: PathLike, dataset: str, run_key: str) -> Path:
    """Where the runner writes the checkpoint of run ``run_key``."""
    return Path(results_dir) / dataset / "checkpoints" / f"{run_key}.pt"


def load_checkpoint(path: PathLike, kind: str = checkpoint_format.KIND_BEST) -> Dict[str, Any]:
    """The checkpoint at ``path`` as a dict (tensors on the CPU), loaded with ``weights_only=True``
    only: no code in the file can run while reading it. The payload is checked against
    :mod:`.checkpoint_format` (``kind``). Raises :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; runs save one under "
                              "<results>/<dataset>/checkpoints/<run key>.pt (the run's record names it).")
    payload = _load_weights_only(path)
    problems = checkpoint_format.problems(payload, kind)
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems)}. Give a file from <results>/<dataset>/checkpoints/ "
                              "(rerun the training run to write it again if it is damaged).")
    return payload


def _load_weights_only(path: Path) -> Any:
    import torch

    if "weights_only" not in inspect.signature(torch.load).parameters:
        raise CheckpointError(f"{path}: torch {torch.__version__} cannot load a file as plain data "
                              "(torch.load has no weights_only), and loading it any other way could run code "
                              "stored in it; install torch >= 1.13 to read checkpoints.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever fails, the file is not one we can read safely
        raise CheckpointError(
            f"{path}: not a checkpoint mmrec-rearm can read ({_reason(exc)}). Checkpoints are read as weights and "
            "plain values only, never by running code stored in the file; a file that needs more was not "
            "written by mmrec-rearm, or is damaged.") from None


def _reason(exc: BaseException) -> str:
    """A short reason for a failed load, without torch's advice to load the file unsafely."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "weights_only" in first:
        first = ""
    first = first.split(". ")[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass
class Splits:
    """The interactions of a dataset folder: training matrix and test pairs, MMRec's id convention."""
    n_users: int
    n_items: int
    train: sp.csr_matrix        # (n_users, n_items) 0/1, x_label == 0
    test: sp.csr_matrix         # (n_users, n_items) 0/1, x_label == 2


def read_splits(folder: PathLike, inter_file: Optional[str] = None) -> Splits:
    """Train and test interactions of ``folder/<inter_file>`` (default ``<folder name>.inter``).
    Counts are max id over all splits + 1, as MMRec computes them."""
    from ..data import read_interactions

    folder = Path(folder)
    parsed = read_interactions(folder / (inter_file or f"{folder.name}.inter"))
    if parsed.users.size == 0:
        raise DatasetError(f"{folder / (inter_file or folder.name + '.inter')}: no interaction rows.")
    return Splits(parsed.n_users, parsed.n_items, parsed.split_matrix(0), parsed.split_matrix(2))


class _MMRecLikeConfig(dict):
    """A plain dict that answers None for an absent key, like MMRec's Config."""

    def __missing__(self, key):
        return None


@dataclass
class LoadedModel:
    model: Any                  # the rebuilt model, in eval mode
    checkpoint: Dict[str, Any]  # the payload without the state_dict
    folder: Path
    splits: Splits


def rebuild_model(checkpoint: Union[PathLike, Dict[str, Any]], *, data_dir: Optional[PathLike] = None,
                  device: str = "cpu", cache_dir: Any = None, allow_other_data: bool = False) -> LoadedModel:
    """The model of ``checkpoint`` (a path or a loaded payload) with its weights, in eval mode.

    data_dir: the dataset folder when it moved since training (default: the stored one). cache_dir:
    graph cache folder, ``False`` for none (default: the stored configuration's ``rearm_cache_dir``).
    The dataset must be the one the model was trained on: same user and item counts, and the same
    data fingerprint (training interactions, features, ids). ``allow_other_data=True`` uses another
    dataset of the same counts anyway, with a logged warning naming both fingerprints.
    """
    import importlib

    from ..host import ArrayDataLoader

    payload = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    where = str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint"
    name = str(payload["model"])
    if name not in REBUILDABLE:
        raise CheckpointError(f"{where}: model '{name}' cannot be rebuilt here; only {', '.join(REBUILDABLE)}.")
    folder = Path(data_dir if data_dir is not None else payload["dataset_folder"]).resolve()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder of the checkpoint not found; pass data_dir= (--data-dir) "
                           "with the folder holding its .inter and feature files.")
    config = _MMRecLikeConfig(payload["config"])
    splits = read_splits(folder, config.get("inter_file_name") or f"{config.get('dataset')}.inter")
    expected = (int(payload.get("n_users") or splits.n_users), int(payload.get("n_items") or splits.n_items))
    if (splits.n_users, splits.n_items) != expected:
        raise DatasetError(f"{folder}: has {splits.n_users} users and {splits.n_items} items, the checkpoint "
                           f"{where} was trained with {expected[0]} and {expected[1]}; pass the dataset it was "
                           "trained on (data_dir=).")
    # the model finds its files at abspath(data_path + dataset); point both at the folder given
    config.update(data_path=str(folder.parent) + os.sep, dataset=folder.name, device=device)
    if cache_dir is not None:
        config["rearm_cache_dir"] = cache_dir
    coo = splits.train.tocoo()
    loader = ArrayDataLoader(coo.row, coo.col, splits.n_users, splits.n_items)
    module, cls = REBUILDABLE[name]
    model = getattr(importlib.import_module(module), cls)(config, loader)
    _check_same_data(payload, getattr(model, "data_fingerprint", None), folder, where, allow_other_data)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the weights do not fit the model rebuilt from its configuration "
                              f"({str(exc).splitlines()[0]} ...); was the model code changed since?") from exc
    model.eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return LoadedModel(model, info, folder, splits)


def _check_same_data(payload: Dict[str, Any], found: Optional[str], folder: Path, where: str,
                     allow_other_data: bool) -> None:
    """Refuse (or, allowed, warn about) a dataset whose fingerprint is not the checkpoint's."""
    stored = payload.get("data_fingerprint")
    trained = payload.get("dataset_folder")
    if stored is not None and stored == found:
        return
    if stored is None:
        problem = (f"the checkpoint {where} records no data fingerprint (written by an older mmrec-rearm), so "
                   f"{folder} cannot be checked to be the data it was trained on ({trained})")
    else:
        problem = (f"{folder} (data fingerprint {str(found)[:16]}) is not the data the checkpoint {where} was "
                   f"trained on ({trained}, fingerprint {stored[:16]}): its training interactions, item "
                   "features or ids differ, so its user and item ids would not mean the same people and items")
    if not allow_other_data:
        raise DatasetError(f"{problem}. Pass the dataset it was trained on (--data-dir), or --allow-other-data "
                           "(allow_other_data=True) to use this one anyway.")
    logger.warning("%s; using it anyway (--allow-other-data).", problem)


def scores(model: Any, users: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """``model.full_sort_predict`` for ``users`` (n,) -> (n, n_items) float32 scores, in batches."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch = torch.as_tensor(np.asarray(users[start:start + batch_size], dtype=np.int64), device=device)
            out.append(model.full_sort_predict([batch]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, int(model.n_items)), dtype=np.float32)
