"""DRAGON / DualGNN's ``user_graph_dict.npy``, built from sparse co-occurrence in seconds.

Format, as MMRec e775373 reads it (``models/dragon.py`` and ``models/dualgnn.py``:
``np.load(path, allow_pickle=True).item()``, then ``d[i][0][:k]`` / ``d[i][1][:k]`` for every
``i in range(len(d))``, appending to those slices when a user has fewer than ``k`` neighbours):

* a ``dict`` with one entry per user id ``0 .. n_users - 1`` (``n_users`` = max user id over all
  splits + 1, MMRec's user count);
* each value ``[neighbours, weights]``: two Python *lists* (the models call ``.append`` on them)
  of the users sharing at least one training item with this user, most shared items first, at
  most ``k`` of them, and the number of shared items as Python floats (the models softmax them);
  a user with no such neighbour gets ``[[], []]``;
* the user itself is never its own neighbour; ties in the count are ordered by user id.

MMRec's ``preprocessing/dualgnn-gen-u-u-matrix.py`` computes the same counts with a Python double
loop over user pairs and a dense ``n_users x n_users`` tensor; here they come from the sparse
co-occurrence top-k that REARM's user graph uses (``R R^T``, a block of users at a time).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import scipy.sparse as sp

from ..data import read_interactions, training_matrix
from ..errors import DatasetError
from ..graphs import cooccurrence_counts_topk
from .mmrec_config import dataset_folder, merged_config, mmrec_src

PathLike = Union[str, "os.PathLike[str]"]
#: MMRec's generator keeps at most 200 neighbours per user; DRAGON and DualGNN use the first 40.
DEFAULT_NEIGHBOURS = 200


def cooccurrence_neighbours(interactions: sp.csr_matrix, k: int = DEFAULT_NEIGHBOURS,
                            block_rows: Optional[int] = None) -> Dict[int, list]:
    """Top-``k`` co-occurring users of every user, in ``user_graph_dict`` form.

    ``interactions``: ``(n_users, n_items)`` training matrix; any non-zero counts as one
    interaction. Returns ``{user: [neighbour ids (list of int), shared-item counts (list of float)]}``.
    The counts and their order come from the REARM graph builder
    (:func:`mmrec_rearm.graphs.cooccurrence_counts_topk`); ``block_rows`` forces its block size.
    """
    if k < 1:
        raise DatasetError(f"k={k}: the number of neighbours per user must be at least 1.")
    rows, cols, counts = cooccurrence_counts_topk(interactions, k, side="user", block_size=block_rows)
    n_users = interactions.shape[0]
    bounds = np.cumsum(np.bincount(rows, minlength=n_users))[:-1]
    return {user: [ids.tolist(), weights.astype(np.float64).tolist()]
            for user, (ids, weights) in enumerate(zip(np.split(cols, bounds), np.split(counts, bounds)))}


def make_user_graph_dict(folder: PathLike, dataset: Optional[str] = None, *, k: int = DEFAULT_NEIGHBOURS,
                         inter_file: Optional[str] = None, file_name: Optional[str] = None) -> Path:
    """Write DRAGON / DualGNN's user graph file from the training rows (``x_label == 0``).

    Two ways to name the data: ``folder`` is a dataset folder (``inter_file`` defaults to
    ``<folder name>.inter``, the output to ``user_graph_dict.npy``), or ``folder`` is an MMRec
    checkout and ``dataset`` a dataset name, in which case the dataset folder, ``inter_file_name``
    and ``user_graph_dict_file`` come from the checkout's configuration, as MMRec would resolve
    them. Returns the path written. The file is replaced atomically, so a concurrent reader sees
    the old or the new file, never half of one.
    """
    from ..atomic import atomic_open, check_writable

    folder = Path(folder)
    if dataset is not None:
        src = mmrec_src(folder)
        config = merged_config(src, "__none__", dataset)
        folder = dataset_folder(src, config, dataset)
        inter_file = inter_file or config.get("inter_file_name")
        file_name = file_name or config.get("user_graph_dict_file")
    inter_path = folder / (inter_file or f"{folder.name}.inter")
    if folder.is_dir():
        check_writable(folder, what="the user graph file", create=False)
    parsed = read_interactions(inter_path)
    if parsed.users.size == 0:
        raise DatasetError(f"{inter_path}: no interaction rows; cannot build the user co-occurrence graph.")
    n_users, n_items = int(parsed.users.max()) + 1, int(parsed.items.max()) + 1
    train = parsed.labels == 0
    matrix = training_matrix(parsed.users[train], parsed.items[train], n_users, n_items)
    graph = cooccurrence_neighbours(matrix, k)
    target = folder / (file_name or "user_graph_dict.npy")
    with atomic_open(target, "wb", what="the user graph file") as handle:
        np.save(handle, graph, allow_pickle=True)  # MMRec's format: a pickled dict (we write it; MMRec reads it)
    return target
