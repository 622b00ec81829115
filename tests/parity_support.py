"""Data and comparisons shared by the parity tests of the five baselines (the TikTok subset, its
``Subset`` type and the graph conversions come from tests/official_harness.py, REARM's harness).

* :func:`tiktok_subset` reads the real TikTok window all parity tests use (600 users with all
  their interactions, the items they touch, their 128-d image and audio features), or skips;
* :func:`fixed_batch` draws a fixed batch of (user, positive, negative) triples from it;
* conversions between our graphs, scipy and torch sparse tensors, and the DGL(-like) graphs of
  the MGDCF / MIG-GT code;
* :func:`perturb` moves weights off their initial values, so a weight copied onto the wrong
  tensor shows; difference measures and reporting (printed with ``-s``, recorded as test
  properties).

How the authors' code is found and imported: tests/official_code.py.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from mmrec_rearm.model.layers import SparseGraph

# the data and conversions REARM's official-code harness owns, shared by every parity test
from official_harness import (SCORED_USERS, TIKTOK_DEFAULT, TIKTOK_ENV, USER_WINDOW, Subset,  # noqa: F401
                              data_folder_or_skip, graph_as_csr, read_subset, to_csr, to_torch_sparse)

#: largest scaled difference (:func:`scaled_difference`) a float64 baseline parity check accepts
TOLERANCE = 1e-6


def tiktok_subset(window: Tuple[int, int] = USER_WINDOW) -> Subset:
    """:func:`official_harness.read_subset` of the TikTok data, or skip the test saying how to enable it."""
    folder = data_folder_or_skip(TIKTOK_ENV, TIKTOK_DEFAULT, "tiktok", ("tiktok.inter", "image_feat.npy", "audio_feat.npy"))
    return read_subset(folder, "tiktok", window)


def training_pairs(subset: Subset) -> Tuple[np.ndarray, np.ndarray]:
    """(users, items) of the training split, int64 arrays in file order."""
    keep = subset.split == 0
    return subset.users[keep].astype(np.int64), subset.items[keep].astype(np.int64)


def fixed_batch(subset: Subset, size: int = 256, seed: int = 0,
                negatives: str = "unseen") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` distinct training (user, positive) pairs and one negative each -> LongTensors
    (size,) x 3. ``negatives``: ``unseen``, an item the user has in no split (the REARM and MGDCF
    samplers' rule), or ``untrained``, an item without a training interaction of the user (MMRec's)."""
    rng = np.random.default_rng(seed)
    users, items = training_pairs(subset)
    pick = rng.choice(len(users), size=size, replace=False)
    held = np.ones(len(subset.users), dtype=bool) if negatives == "unseen" else subset.split == 0
    seen: Dict[int, set] = {}
    for u, i in zip(subset.users[held], subset.items[held]):
        seen.setdefault(int(u), set()).add(int(i))
    drawn = []
    for u in users[pick]:
        while True:
            j = int(rng.integers(subset.n_items))
            if j not in seen[int(u)]:
                drawn.append(j)
                break
    return torch.from_numpy(users[pick]), torch.from_numpy(items[pick]), torch.tensor(drawn, dtype=torch.long)


def eval_users(subset: Subset, count: int = 100) -> torch.Tensor:
    """``count`` users spread over the window, including every user without training items."""
    spread = np.linspace(0, subset.n_users - 1, count).astype(np.int64)
    return torch.from_numpy(np.unique(np.concatenate([spread, subset.users_without_training])))


# --------------------------------------------------------------------------------------------
# conversions


def float64_graph(matrix: sp.spmatrix) -> SparseGraph:
    """A float64 :class:`SparseGraph` of a scipy matrix (our constructor stores float32)."""

    def csr(m):
        m = sp.csr_matrix(m, dtype=np.float64)
        m.sort_indices()
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data), size=m.shape)

    return SparseGraph.from_tensors(csr(matrix), csr(sp.csr_matrix(matrix).T))


def as_matrix(graph) -> sp.csr_matrix:
    """The message-passing matrix of a DGL(-like) graph: entry (dst, src) = the edge weight the
    MGDCF code stores under ``mgdcf_weight``."""
    src, dst = (t.numpy() for t in graph.edges())
    weight = graph.edata["mgdcf_weight"].double().numpy()
    n = graph.num_nodes()
    return sp.csr_matrix((weight, (dst, src)), shape=(n, n))


# --------------------------------------------------------------------------------------------
# weights, differences, reports


def perturb(tensors: Iterable[torch.Tensor], seed: int, scale: float = 0.05) -> None:
    """Move every floating tensor off its initial value with seeded noise (drawn in its dtype, in
    the order given: pass ``[p for _, p in sorted(model.named_parameters())]`` for a stable
    order); NaN starting values become finite first."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in tensors:
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.copy_(torch.nan_to_num(tensor, nan=0.0) + scale * noise)


def _as_float64(x) -> np.ndarray:
    return x.detach().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def max_difference(a, b) -> float:
    """Largest absolute difference of two arrays / tensors / sparse matrices of one shape."""
    if sp.issparse(a) or sp.issparse(b):
        diff = (sp.csr_matrix(a) - sp.csr_matrix(b)).tocsr()
        return float(np.abs(diff.data).max()) if diff.nnz else 0.0
    a, b = _as_float64(a), _as_float64(b)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max()) if a.size else 0.0


def scale_of(x) -> float:
    """Largest magnitude of an array / tensor (0 when empty)."""
    x = _as_float64(x)
    return float(np.abs(x).max()) if x.size else 0.0


def scaled_difference(ours, theirs) -> float:
    """:func:`max_difference` divided by max(1, largest magnitude of ``theirs``): relative for
    large summed losses, absolute for values of order 1."""
    return max_difference(ours, theirs) / max(1.0, scale_of(theirs))


def report(record_property, name: str, value) -> None:
    """Print (``-s``) and record one measured difference."""
    print(f"[parity] {name} = {value}")
    record_property(name, value)


def check_differences(label: str, found: dict, record_property) -> None:
    """Record, print and check (<= :data:`TOLERANCE`) the largest scaled differences of one case."""
    for name, value in found.items():
        record_property(f"max_diff_{name}", value)
    print(f"{label}: largest differences {found}")
    assert all(value <= TOLERANCE for value in found.values()), found
