"""Data and comparisons shared by the parity tests (REARM's and the five baselines').

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

import dataclasses
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_rearm.model.layers import SparseGraph

REPO_ROOT = Path(__file__).resolve().parents[1]
TIKTOK_ENV = "REARM_TIKTOK_DATA"
#: the users of the window (TikTok ids) of every parity test
USER_WINDOW = (4200, 4800)
#: largest scaled difference (:func:`scaled_difference`) a float64 baseline parity check accepts
TOLERANCE = 1e-6


@dataclasses.dataclass
class Subset:
    """Users of a window of TikTok with all their rows; users and items re-indexed (items in id order)."""

    users: np.ndarray        # (n,) user id - window start, every split
    items: np.ndarray        # (n,) re-indexed item ids
    split: np.ndarray        # (n,) 0 train / 1 valid / 2 test
    features: Dict[str, np.ndarray]  # "image" / "audio" -> (n_items, 128) float32
    n_users: int
    n_items: int

    @property
    def train(self) -> sp.csr_matrix:
        """The training split as (n_users, n_items) float32 0/1 CSR."""
        keep = self.split == 0
        matrix = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (self.users[keep], self.items[keep])),
                               shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @property
    def users_without_training(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.train.indptr) == 0)

    def write_features(self, folder: Path) -> None:
        """image_feat.npy / audio_feat.npy where the host stand-in loads them."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, values in self.features.items():
            np.save(folder / f"{name}_feat.npy", values)


def tiktok_folder() -> Optional[Path]:
    """``$REARM_TIKTOK_DATA``, else ``shared/data/tiktok`` beside the repository or one level up
    (a git worktree of the repository); None when it holds no tiktok.inter."""
    configured = os.environ.get(TIKTOK_ENV)
    folders = ([Path(configured).expanduser()] if configured else
               [REPO_ROOT.parent / "shared" / "data" / "tiktok", REPO_ROOT.parents[1] / "shared" / "data" / "tiktok"])
    return next((folder for folder in folders if (folder / "tiktok.inter").is_file()), None)


def read_subset(folder: Path, window: Tuple[int, int] = USER_WINDOW) -> Subset:
    table = np.loadtxt(folder / "tiktok.inter", dtype=np.int64, delimiter="\t", skiprows=1, usecols=(0, 1, 4))
    low, high = window
    table = table[(table[:, 0] >= low) & (table[:, 0] < high)]
    item_ids, items = np.unique(table[:, 1], return_inverse=True)
    features = {name: np.load(folder / f"{name}_feat.npy")[item_ids].astype(np.float32) for name in ("image", "audio")}
    return Subset(users=table[:, 0] - low, items=items, split=table[:, 2], features=features,
                  n_users=high - low, n_items=len(item_ids))


def tiktok_subset(window: Tuple[int, int] = USER_WINDOW) -> Subset:
    """:func:`read_subset` of the TikTok data, or skip the test saying how to enable it."""
    folder = tiktok_folder()
    if folder is None:
        pytest.skip(f"PARITY TESTS SKIPPED: TikTok data not found; set {TIKTOK_ENV} to a folder with "
                    "tiktok.inter, image_feat.npy and audio_feat.npy")
    return read_subset(folder, window)


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


def to_csr(tensor: torch.Tensor) -> sp.csr_matrix:
    """A torch sparse (or dense) 2-d tensor as float64 CSR, duplicate entries summed."""
    if tensor.layout != torch.strided:
        tensor = tensor.detach().coalesce()
        rows, cols = tensor.indices().numpy()
        return sp.csr_matrix((tensor.values().double().numpy(), (rows, cols)), shape=tuple(tensor.shape))
    return sp.csr_matrix(tensor.detach().double().numpy())


def to_torch_sparse(matrix: sp.spmatrix, dtype=torch.float32) -> torch.Tensor:
    """Torch sparse COO (the authors' graph format) of a scipy matrix."""
    coo = sp.coo_matrix(matrix)
    indices = torch.from_numpy(np.vstack((coo.row, coo.col)).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data).to(dtype), coo.shape).coalesce()


def graph_as_csr(graph: SparseGraph) -> sp.csr_matrix:
    """Our SparseGraph (torch sparse CSR) as float64 scipy CSR."""
    m = graph.forward_matrix
    return sp.csr_matrix((m.values().double().numpy(), m.col_indices().numpy(), m.crow_indices().numpy()),
                         shape=tuple(m.shape))


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
