"""Shared harness for the baselines' parity tests against the authors' code (MICRO, DiffMM).

* :func:`locate_clone` finds the authors' clone (environment variable first, then default places)
  or says why not and how to enable the tests;
* :func:`import_authors` imports the authors' modules from the clone at run time (``sys.argv`` is
  emptied while their module-level ``argparse`` runs); their generic top-level names
  (``utility``, ``Utils``, ``Model``, ``main`` ...) are removed from ``sys.modules`` again and
  whatever was there before is restored;
* :func:`authors_runtime` wraps every call into their code with the shims it needs here
  (documented in docs/testing.md): ``.cuda()`` is the identity on a CPU-only machine and missing
  third-party modules get small stand-ins;
* :func:`tiktok_subset` reads a window of real TikTok users with their real features;
* small comparison helpers (largest differences, reporting).

Nothing of the authors' code is copied here; their functions are called.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TIKTOK_ENV = "REARM_TIKTOK_DATA"


def _candidates(env: str, defaults: Sequence[Path]) -> Tuple[list, str]:
    configured = os.environ.get(env)
    if configured:
        return [Path(configured).expanduser()], f"{env}={configured}"
    return list(defaults), "defaults " + ", ".join(str(p) for p in defaults)


def locate_clone(env: str, defaults: Sequence[Path], required: Sequence[str], howto: str) -> Tuple[Optional[Path], str]:
    """(clone folder, "") or (None, why not): ``env`` wins when set, else the first default that
    exists; a folder counts when every path of ``required`` is a file in it."""
    folders, origin = _candidates(env, defaults)
    for folder in folders:
        if folder.is_dir():
            missing = [name for name in required if not (folder / name).is_file()]
            if missing:
                return None, f"{folder} ({origin}) lacks {', '.join(missing)}; to enable: {howto}"
            return folder, ""
    return None, f"the authors' clone was not found ({origin}); to enable: {howto}"


def tiktok_folder() -> Optional[Path]:
    """``$REARM_TIKTOK_DATA``, else ``shared/data/tiktok`` beside the repository or one level up
    (a git worktree of the repository)."""
    folders, _ = _candidates(TIKTOK_ENV, [REPO_ROOT.parent / "shared" / "data" / "tiktok",
                                          REPO_ROOT.parents[1] / "shared" / "data" / "tiktok"])
    for folder in folders:
        if (folder / "tiktok.inter").is_file():
            return folder
    return None


def _scatter_add(src, index, dim=0, dim_size=None, **_):
    """Stand-in for ``torch_scatter.scatter_add`` on 1-d inputs (what MICRO's norm.py uses)."""
    size = int(index.max()) + 1 if dim_size is None else int(dim_size)
    return torch.zeros(size, dtype=src.dtype, device=src.device).index_add(0, index, src)


#: modules the authors' code imports that this environment may lack -> stand-in factory
STAND_INS: Dict[str, Callable[[], object]] = {
    "torch_scatter": lambda: types.SimpleNamespace(scatter_add=_scatter_add),
    "setproctitle": lambda: types.SimpleNamespace(setproctitle=lambda *a, **k: None),
}


@contextlib.contextmanager
def authors_runtime() -> Iterator[None]:
    """What the authors' code needs while it runs here: ``Tensor.cuda()`` / ``Module.cuda()``
    return their object unchanged (their code calls them unconditionally; the comparison runs on
    CPU), modules of :data:`STAND_INS` that are not installed get their stand-in (MICRO imports
    ``torch_scatter`` inside a function), and their deprecation warnings are silenced."""
    added = [name for name in STAND_INS if name not in sys.modules and importlib.util.find_spec(name) is None]
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        patch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
        for name in added:
            sys.modules[name] = STAND_INS[name]()
        try:
            yield
        finally:
            for name in added:
                sys.modules.pop(name, None)


def import_authors(folder: Path, modules: Sequence[str], clashing: Iterable[str],
                   stubs: Mapping[str, types.ModuleType] = ()) -> types.SimpleNamespace:
    """Import ``modules`` (dotted names) from ``folder`` -> namespace of modules (dots -> ``_``),
    inside :func:`authors_runtime`.

    ``clashing``: top-level names hidden before and restored after the import. ``stubs``: module
    name -> object placed in ``sys.modules`` during the import (e.g. a data-loading module that
    reads files at import time). Skips (saying why) if the import fails anyway."""
    stubs = dict(stubs)
    clashing = set(clashing) | {name.split(".")[0] for name in stubs}

    def hidden(name: str) -> bool:
        return name.split(".")[0] in clashing

    saved = {name: mod for name, mod in sys.modules.items() if hidden(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(stubs)
    sys.path.insert(0, str(folder))
    argv = sys.argv
    sys.argv = [argv[0]]  # their argparse runs at import time and must see no pytest options
    try:
        with authors_runtime():
            loaded = {name.replace(".", "_"): importlib.import_module(name) for name in modules}
    except ImportError as exc:
        pytest.skip(f"PARITY TESTS SKIPPED: the authors' code at {folder} does not import ({exc}); "
                    "see docs/testing.md")
    finally:
        sys.argv = argv
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if hidden(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    return types.SimpleNamespace(**loaded)


@dataclasses.dataclass
class Subset:
    """Users ``window`` of TikTok with all their rows; items re-indexed in id order."""

    users: np.ndarray        # (n,) user ids - window start, every split
    items: np.ndarray        # (n,) re-indexed item ids
    split: np.ndarray        # (n,) 0 train / 1 valid / 2 test
    features: Dict[str, np.ndarray]  # "image" / "audio" -> (n_items, 128) float32
    n_users: int
    n_items: int

    @property
    def train(self) -> sp.csr_matrix:
        keep = self.split == 0
        matrix = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (self.users[keep], self.items[keep])),
                               shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def batch(self, size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, positives, negatives) (size,) int64: training pairs and, per pair, an item
        without a training interaction of that user."""
        rng = np.random.default_rng(seed)
        train = self.train
        pick = rng.choice(np.flatnonzero(self.split == 0), size=size, replace=False)
        users, positives = self.users[pick], self.items[pick]
        negatives = np.array([rng.choice(np.setdiff1d(np.arange(self.n_items), train[u].indices)) for u in users])
        return torch.from_numpy(users), torch.from_numpy(positives), torch.from_numpy(negatives)

    def write_features(self, folder: Path) -> None:
        """image_feat.npy / audio_feat.npy where the host stand-in loads them."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, values in self.features.items():
            np.save(folder / f"{name}_feat.npy", values)


def tiktok_subset(window: Tuple[int, int]) -> Subset:
    folder = tiktok_folder()
    if folder is None:
        pytest.skip(f"PARITY TESTS SKIPPED: TikTok data not found; set {TIKTOK_ENV} to a folder with "
                    "tiktok.inter, image_feat.npy and audio_feat.npy")
    table = np.loadtxt(folder / "tiktok.inter", dtype=np.int64, delimiter="\t", skiprows=1, usecols=(0, 1, 4))
    low, high = window
    table = table[(table[:, 0] >= low) & (table[:, 0] < high)]
    item_ids, items = np.unique(table[:, 1], return_inverse=True)
    features = {name: np.load(folder / f"{name}_feat.npy")[item_ids].astype(np.float32) for name in ("image", "audio")}
    return Subset(users=table[:, 0] - low, items=items, split=table[:, 2], features=features,
                  n_users=high - low, n_items=len(item_ids))


def to_csr(tensor: torch.Tensor) -> sp.csr_matrix:
    """A torch sparse (or dense) 2-d tensor as float64 CSR, duplicate entries summed."""
    if tensor.layout != torch.strided:
        tensor = tensor.detach().coalesce()
        rows, cols = tensor.indices().numpy()
        return sp.csr_matrix((tensor.values().double().numpy(), (rows, cols)), shape=tuple(tensor.shape))
    return sp.csr_matrix(tensor.detach().double().numpy())


def to_torch_sparse(matrix: sp.spmatrix, dtype=torch.float32) -> torch.Tensor:
    coo = sp.coo_matrix(matrix)
    indices = torch.from_numpy(np.vstack((coo.row, coo.col)).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data).to(dtype), coo.shape).coalesce()


def graph_as_csr(graph) -> sp.csr_matrix:
    """Our SparseGraph (torch sparse CSR) as float64 scipy CSR."""
    m = graph.forward_matrix
    return sp.csr_matrix((m.values().double().numpy(), m.col_indices().numpy(), m.crow_indices().numpy()),
                         shape=tuple(m.shape))


def max_difference(a, b) -> float:
    """Largest absolute difference of two arrays / tensors / sparse matrices of one shape."""
    if sp.issparse(a) or sp.issparse(b):
        diff = (sp.csr_matrix(a) - sp.csr_matrix(b)).tocsr()
        return float(np.abs(diff.data).max()) if diff.nnz else 0.0
    a = a.detach().double().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.detach().double().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def scale_of(x) -> float:
    x = x.detach().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    return float(np.abs(x).max()) if x.size else 0.0


def report(record_property, name: str, value) -> None:
    print(f"[parity] {name} = {value}")
    record_property(name, value)


def perturb(parameters: Iterable[Tuple[str, torch.Tensor]], seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its initial value with seeded noise (sorted by name), so that a
    weight mapped onto the wrong tensor changes the result."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(parameters, key=lambda kv: kv[0]):
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(parameter.dtype))
