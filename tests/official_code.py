"""Run-time import of authors' code from a local clone, for the baseline parity tests.

Nothing of the authors' code is copied into this repository: each parity test finds a clone
(an environment variable, else a default folder), imports the modules it needs with the clone first
on sys.path, and afterwards takes every module it loaded out of ``sys.modules`` again, restoring
what was there (the clones use generic top-level names such as ``utils`` that MMRec also uses).

DGL and torch_scatter, which the MGDCF / MIG-GT code imports, have no wheels for the torch this
project pins; when they cannot be imported, ``tests/official_shims`` (plain-torch stand-ins for
exactly the calls that code makes, see docs/testing.md) is put on sys.path for the import.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Tuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_rearm.model.layers import SparseGraph

SHIMS = Path(__file__).resolve().parent / "official_shims"
SHIMMED = ("dgl", "torch_scatter")


def locate_clone(env: str, default: Path, required: Sequence[str], howto: str) -> Tuple[Path, str]:
    """(clone folder, "") or skip the calling test, naming the reason and how to enable it."""
    configured = os.environ.get(env)
    folder = Path(configured).expanduser() if configured else default.expanduser()
    origin = f"{env}={configured}" if configured else f"default {default}"
    if not folder.is_dir():
        pytest.skip(f"PARITY TESTS SKIPPED: authors' clone not found ({origin}); to enable: {howto}")
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"PARITY TESTS SKIPPED: {folder} ({origin}) lacks {', '.join(missing)}; to enable: {howto}")
    return folder, ""


def _shims_needed() -> list:
    return [name for name in SHIMMED if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def isolated_imports(folder: Path, top_level: Iterable[str]):
    """``folder`` first on sys.path (and the shims last, when needed) while importing; modules under
    the ``top_level`` names (and shimmed ones) loaded meanwhile are removed afterwards and any
    previously loaded modules of those names restored. Yields the names of the shims used."""
    shims = _shims_needed()
    names = set(top_level) | set(shims)

    def ours(name: str) -> bool:
        return name.split(".")[0] in names

    saved = {name: mod for name, mod in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    if shims:
        sys.path.append(str(SHIMS))
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave the clone as it was
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield shims
    finally:
        sys.dont_write_bytecode = bytecode
        sys.path.remove(str(folder))
        if shims:
            sys.path.remove(str(SHIMS))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def import_from_clone(folder: Path, modules: Sequence[str], top_level: Iterable[str]) -> types.SimpleNamespace:
    """The named modules of the clone as attributes (dots become underscores), plus ``shims``
    (the stand-ins used). Skips the test, with the reason, when they do not import."""
    with isolated_imports(folder, top_level) as shims:
        try:
            loaded = {name.replace(".", "_"): importlib.import_module(name) for name in modules}
        except ImportError as exc:
            pytest.skip(f"PARITY TESTS SKIPPED: the authors' code at {folder} does not import ({exc}); "
                        "see docs/testing.md")
    return types.SimpleNamespace(shims=tuple(shims), **loaded)


# --------------------------------------------------------------------------------------------
# data and comparisons shared by the baseline parity tests


def tiktok_subset():
    """The real TikTok window of the REARM parity tests (600 users with all their interactions,
    the items they touch and their 128-d image and audio features); skips without the data."""
    import test_parity_official as rearm_parity

    configured = os.environ.get(rearm_parity.TIKTOK_ENV)
    folder = Path(configured) if configured else rearm_parity.TIKTOK_DEFAULT
    if not (folder / "tiktok.inter").is_file():
        pytest.skip(f"PARITY TESTS SKIPPED: TikTok data not found at {folder}; set "
                    f"{rearm_parity.TIKTOK_ENV} to a folder with tiktok.inter, image_feat.npy and audio_feat.npy")
    return rearm_parity.read_subset(folder)


def training_pairs(subset):
    """(users, items) of the training split, int64 arrays in file order."""
    keep = subset.split == 0
    return subset.users[keep].astype(np.int64), subset.items[keep].astype(np.int64)


def fixed_batch(subset, size: int = 256, seed: int = 0):
    """``size`` training (user, positive) pairs and one negative each, drawn among the items the
    user has in no split: LongTensors (size,) x 3."""
    rng = np.random.default_rng(seed)
    users, items = training_pairs(subset)
    pick = rng.choice(len(users), size=size, replace=False)
    seen = {}
    for u, i in zip(subset.users, subset.items):
        seen.setdefault(int(u), set()).add(int(i))
    negatives = []
    for u in users[pick]:
        while True:
            j = int(rng.integers(subset.n_items))
            if j not in seen[int(u)]:
                negatives.append(j)
                break
    return (torch.from_numpy(users[pick]), torch.from_numpy(items[pick]),
            torch.tensor(negatives, dtype=torch.long))


def eval_users(subset, count: int = 100):
    """``count`` users spread over the window, including every user without training items."""
    spread = np.linspace(0, subset.n_users - 1, count).astype(np.int64)
    chosen = np.unique(np.concatenate([spread, subset.users_without_training]))
    return torch.from_numpy(chosen)


def max_difference(ours, theirs) -> float:
    """Largest absolute difference, scaled by max(1, largest magnitude) (a relative check for
    large summed losses, an absolute one for values of order 1)."""
    ours, theirs = (torch.as_tensor(x).detach().double() for x in (ours, theirs))
    assert ours.shape == theirs.shape, f"shapes differ: ours {tuple(ours.shape)}, theirs {tuple(theirs.shape)}"
    scale = max(1.0, float(theirs.abs().max()) if theirs.numel() else 1.0)
    return float((ours - theirs).abs().max()) / scale if ours.numel() else 0.0


#: largest scaled difference (:func:`max_difference`) a parity check accepts, float64
TOLERANCE = 1e-6


def check_differences(label: str, found: dict, record_property) -> None:
    """Record (test properties), print (``-s``) and check the largest differences of one case."""
    for name, value in found.items():
        record_property(f"max_diff_{name}", value)
    print(f"{label}: largest differences {found}")
    assert all(value <= TOLERANCE for value in found.values()), found


def perturb_(tensors, seed: int, scale: float = 0.05) -> None:
    """Move every tensor off its initial value with seeded noise (so a weight copied into the wrong
    place changes the result)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in tensors:
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


def as_matrix(graph):
    """The message-passing matrix of a DGL(-like) graph: entry (dst, src) = the edge weight the
    MGDCF code stores under ``mgdcf_weight``."""
    src, dst = (t.numpy() for t in graph.edges())
    weight = graph.edata["mgdcf_weight"].double().numpy()
    n = graph.num_nodes()
    return sp.csr_matrix((weight, (dst, src)), shape=(n, n))


def float64_graph(matrix) -> SparseGraph:
    """A float64 :class:`SparseGraph` of a scipy matrix (our constructor stores float32)."""

    def csr(m):
        m = sp.csr_matrix(m, dtype=np.float64)
        m.sort_indices()
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data), size=m.shape)

    return SparseGraph.from_tensors(csr(matrix), csr(sp.csr_matrix(matrix).T))
