"""The harness shared by the tests against the official REARM code (github MrShouxingMa/REARM):
importing the official modules (and MMRec's trainer) in isolation, the real-data subsets written
once for both implementations, and building both models with the same graphs and weights.

Nothing of the official code is copied here: its modules are imported from the clone at run time.
Used by tests/test_parity_official.py and tests/test_trajectory_official.py; fixtures in conftest.py.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import os
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from official_code import import_from_clone, isolated_imports

REPO_ROOT = Path(__file__).resolve().parents[1]
TIKTOK_ENV = "REARM_TIKTOK_DATA"
TIKTOK_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "tiktok"
BABY_ENV = "REARM_BABY_DATA"
BABY_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "baby"
USER_WINDOW = (4200, 4800)
SUBSET_NAME = "parity_subset"
#: Baby's feature widths (image, text); the Baby subset gets seeded random features of these shapes
BABY_RANDOM_FEATURES = {"image": 4096, "text": 384}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One official hyper-parameter set: graph parameters plus the model's own."""

    name: str
    graph: dict
    model: dict


BABY = Setting(
    "baby",
    graph=dict(user_knn_k=40, item_knn_k=10, u_mm_image_weight=0.2, i_mm_image_weight=0.0,
               uu_co_weight=0.4, ii_co_weight=0.2),
    model=dict(n_layers=4, rank=3, s_drop=0.4, m_drop=0.6, n_ii_layers=1, n_uu_layers=1,
               cl_tmp=0.6, reg_weight=5e-4),
)
SPORTS = Setting(
    "sports",
    graph=dict(user_knn_k=25, item_knn_k=5, u_mm_image_weight=0.0, i_mm_image_weight=0.2,
               uu_co_weight=0.9, ii_co_weight=0.2),
    model=dict(n_layers=5, rank=7, s_drop=1.0, m_drop=0.2, n_ii_layers=2, n_uu_layers=2,
               cl_tmp=1.5, reg_weight=0.05),
)
SETTINGS = (BABY, SPORTS)



# --------------------------------------------------------------------------------------------
# official code, imported in isolation
# --------------------------------------------------------------------------------------------

_CLASHING_TOP_LEVEL = ("utils", "model", "trainer")
#: MMRec's top-level packages (its `utils` clashes with the official code's)
_MMREC_TOP_LEVEL = ("utils", "common", "models")
# attribute names of the official model's fused homogeneous graphs
OFFICIAL_USER_GRAPH = "stre_uu_graph"
OFFICIAL_ITEM_GRAPH = "stre_ii_graph"


def import_official(folder: Path) -> types.SimpleNamespace:
    """The official `utils.helper`, `utils.data_loader` and `model` modules as attributes,
    imported in isolation by :func:`official_code.import_from_clone` (the importer every parity
    test shares). They stay usable afterwards (functions keep their globals) but are not left in
    sys.modules under their generic names; the test skips, saying why, when they do not import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = import_from_clone(folder, ["utils.helper", "utils.data_loader", "model"], _CLASHING_TOP_LEVEL)
    return types.SimpleNamespace(helper=loaded.utils_helper, data_loader=loaded.utils_data_loader, model=loaded.model)


def import_mmrec_trainer(src: Path) -> types.SimpleNamespace:
    """MMRec's own ``common.trainer.Trainer`` and its ``configs/overall.yaml`` from the checkout's
    ``src`` folder, imported in isolation like the official modules (nothing is written there)."""
    import yaml

    with isolated_imports(src, _MMREC_TOP_LEVEL), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = importlib.import_module("common.trainer")
        except ImportError as exc:
            pytest.skip(f"REAL-MMREC TRAINER SKIPPED: MMRec's common.trainer at {src} does not import ({exc})")
    overall = yaml.safe_load((src / "configs" / "overall.yaml").read_text())
    return types.SimpleNamespace(Trainer=trainer.Trainer, overall=overall)


class MMRecConfig(dict):
    """The mapping MMRec's Trainer reads: ``config[key]`` is None for a missing key, as in MMRec's
    own ``Config``."""

    def __missing__(self, key):
        return None


@contextlib.contextmanager
def _quiet_official(seed: int = 0):
    """Run official code with its deprecation warnings silenced and numpy's global random
    state seeded (its neighbour padding draws from it) and restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        np.random.set_state(state)


def to_csr(tensor) -> sp.csr_matrix:
    """A torch sparse (or dense) 2-d tensor as float64 CSR with duplicate entries summed."""
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.coalesce()
        rows, cols = tensor.indices().numpy()
        values = tensor.values().double().numpy()
        return sp.csr_matrix((values, (rows, cols)), shape=tuple(tensor.shape))
    return sp.csr_matrix(tensor.double().numpy())


def to_torch_sparse(matrix: sp.spmatrix, dtype=torch.float32):
    """Torch sparse COO (the official models' graph format) of a scipy matrix, in ``dtype``."""
    coo = sp.coo_matrix(matrix)
    indices = torch.from_numpy(np.vstack((coo.row, coo.col)).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data).to(dtype), coo.shape).coalesce()


# --------------------------------------------------------------------------------------------
# the TikTok subset, written once for both sides
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Subset:
    users: np.ndarray        # (n,) re-indexed user ids, every split
    items: np.ndarray        # (n,) re-indexed item ids
    split: np.ndarray        # (n,) 0 train / 1 valid / 2 test
    features: dict           # modality -> (n_items, d_m) float32; the first is the official "image", the second its "text"
    n_users: int
    n_items: int

    @property
    def train(self) -> sp.csr_matrix:
        keep = self.split == 0
        matrix = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32),
                                (self.users[keep], self.items[keep])),
                               shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @property
    def users_without_training(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.train.indptr) == 0)

    def write_features(self, folder: Path) -> None:
        """``<name>_feat.npy`` per modality in ``folder``, where the host stand-in loads them."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, values in self.features.items():
            np.save(folder / f"{name}_feat.npy", values)


def read_subset(folder: Path, dataset: str = "tiktok", window: tuple = USER_WINDOW,
                random_features: dict | None = None, seed: int = 2025) -> Subset:
    """The users of `window` with all their interactions from ``<folder>/<dataset>.inter`` and
    the items they touch (re-indexed in id order). Features: the folder's real ``image`` and
    ``audio`` files, or, with ``random_features`` ({modality: width}), seeded uniform ones."""
    table = np.loadtxt(folder / f"{dataset}.inter", dtype=np.int64, delimiter="\t", skiprows=1,
                       usecols=(0, 1, 4))
    low, high = window
    table = table[(table[:, 0] >= low) & (table[:, 0] < high)]
    item_ids, items = np.unique(table[:, 1], return_inverse=True)
    if random_features is None:
        features = {name: np.load(folder / f"{name}_feat.npy")[item_ids].astype(np.float32)
                    for name in ("image", "audio")}
    else:
        rng = np.random.default_rng(seed)
        features = {name: rng.random((len(item_ids), width), dtype=np.float32)
                    for name, width in random_features.items()}
    return Subset(users=table[:, 0] - low, items=items, split=table[:, 2], features=features,
                  n_users=high - low, n_items=len(item_ids))


def data_folder_or_skip(env: str, default: Path, dataset: str, needs: tuple) -> Path:
    """The folder holding ``needs`` for `dataset` (``$env`` or `default`); skips loudly without it."""
    configured = os.environ.get(env)
    folder = Path(configured) if configured else default
    if not all((folder / name).is_file() for name in needs):
        pytest.skip(f"PARITY TESTS SKIPPED: {dataset} data not found at {folder}; set {env} to a folder "
                    f"with {', '.join(needs)}")
    return folder


def write_official_dataset(subset: Subset, root: Path) -> None:
    """The official loader's layout: data/<name>/{train,valid,test}.npy as (2, n) user/item rows,
    image_feat.npy and text_feat.npy (the subset's first and second modality; on TikTok the
    second is audio)."""
    folder = root / "data" / SUBSET_NAME
    folder.mkdir(parents=True)
    for code, name in enumerate(("train", "valid", "test")):
        keep = subset.split == code
        np.save(folder / f"{name}.npy", np.vstack((subset.users[keep], subset.items[keep])))
    first, second = subset.features.values()
    np.save(folder / "image_feat.npy", first)
    np.save(folder / "text_feat.npy", second)


# --------------------------------------------------------------------------------------------
# building both sides
# --------------------------------------------------------------------------------------------

def official_config(setting: Setting, **overrides) -> types.SimpleNamespace:
    """The attribute bag the official dataset and model read (official defaults elsewhere)."""
    graph = setting.graph
    values = dict(
        device=torch.device("cpu"), dataset=SUBSET_NAME, embedding_dim=64,
        user_knn_k=graph["user_knn_k"], item_knn_k=graph["item_knn_k"],
        num_user_co=graph["user_knn_k"], num_item_co=graph["item_knn_k"],
        u_mm_image_weight=graph["u_mm_image_weight"], i_mm_image_weight=graph["i_mm_image_weight"],
        uu_co_weight=graph["uu_co_weight"], ii_co_weight=graph["ii_co_weight"],
        user_aggr_mode="softmax", cl_loss_weight=1.0, diff_loss_weight=1.0, **setting.model,
    )
    values.update(overrides)
    return types.SimpleNamespace(**values)


@dataclasses.dataclass
class OfficialSide:
    dataset: object              # the official Load_dataset instance
    graphs: dict                 # name -> float64 CSR of the official graphs
    user_counts: np.ndarray      # (n_users, n_users) co-occurrence counts
    item_counts: np.ndarray      # (n_items, n_items)
    user_popularity: np.ndarray  # (n_users,) what the fallback ranks by; -inf: never picked
    item_popularity: np.ndarray


def build_official(official, setting: Setting, workdir: Path) -> OfficialSide:
    """The official graphs: `Load_dataset` (cwd = workdir, where data/ lives; it caches the
    co-occurrence matrices there as .pt, so they are built once for both settings), then the
    co-occurrence sampling and the homogeneous mixture exactly as `REARM.__init__` does them."""
    config = official_config(setting)
    helper = official.helper
    cpu = config.device
    with pytest.MonkeyPatch.context() as patch, _quiet_official():
        patch.chdir(workdir)
        # an opt-in switch some patched clones carry (zero interest instead of 0/0 = NaN for users
        # without training items); the tests want the unpatched behaviour
        patch.delenv("REARM_OFFICIAL_ZERO_EMPTY_USERS", raising=False)
        dataset = official.data_loader.Load_dataset(config)
        user_co = helper.topk_sample(dataset.n_users, dataset.dict_user_co_occ_graph, config.num_user_co,
                                     dataset.topK_users, dataset.topK_users_counts, "softmax", cpu)
        item_co = helper.topk_sample(dataset.n_items, dataset.dict_item_co_occ_graph, config.num_item_co,
                                     dataset.topK_items, dataset.topK_items_counts, "softmax", cpu)
        graphs = {
            "user_cooccurrence": to_csr(user_co),
            "item_cooccurrence": to_csr(item_co),
            "user_interest": to_csr(dataset.u_mm_adj),
            "item_semantic": to_csr(dataset.i_mm_adj),
            "user_homogeneous": to_csr(config.uu_co_weight * user_co + (1.0 - config.uu_co_weight) * dataset.u_mm_adj),
            "item_homogeneous": to_csr(config.ii_co_weight * item_co + (1.0 - config.ii_co_weight) * dataset.i_mm_adj),
            "item_semantic/image": to_csr(helper.get_knn_adj_mat(dataset.i_v_feat, config.item_knn_k, cpu)),
            "item_semantic/audio": to_csr(helper.get_knn_adj_mat(dataset.i_t_feat, config.item_knn_k, cpu)),
        }
    return OfficialSide(
        dataset=dataset, graphs=graphs,
        user_counts=dataset.user_co_occ_matrix.double().numpy(),
        item_counts=dataset.item_co_occ_matrix.double().numpy(),
        user_popularity=_popularity(dataset.topK_users, dataset.topK_users_counts, dataset.n_users),
        item_popularity=_popularity(dataset.topK_items, dataset.topK_items_counts, dataset.n_items),
    )


def _popularity(nodes, counts, n: int) -> np.ndarray:
    popularity = np.full(n, -np.inf)
    popularity[np.asarray(nodes, dtype=np.int64)] = counts
    return popularity



LOSS_WEIGHTS = dict(cl_loss_weight=0.5, diff_loss_weight=2.0)
BATCH_SIZE = 256
SCORED_USERS = np.arange(0, USER_WINDOW[1] - USER_WINDOW[0], 3)  # includes user 171 (no training items)


def perturb_parameters(model, seed: int = 7) -> None:
    """Move every parameter off its initial value (biases 0, LayerNorm 1/0, PReLU 0.25) so that
    a key mapped to the wrong tensor changes the result; NaN starting values (official user
    preferences of users without training items) become finite."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(torch.nan_to_num(parameter, nan=0.0) + 0.05 * noise)


def build_official_model(official, setting: Setting, side: OfficialSide, graphs: dict, workdir: Path,
                         **overrides):
    """The official REARM on the official dataset, then given OUR homogeneous graphs (its own
    co-occurrence rows are padded at random, which no seed of ours reproduces), perturbed
    weights, in eval mode (attention dropout off). ``overrides``: official config attributes
    (default: the loss weights of LOSS_WEIGHTS)."""
    if not hasattr(sp.dok_matrix, "_update"):
        pytest.skip("PARITY MODEL TESTS SKIPPED: the official get_norm_adj_mat needs "
                    "scipy.sparse.dok_matrix._update (scipy < 1.12); run them in the MMRec host "
                    "environment (docs/testing.md)")
    config = official_config(setting, **{**LOSS_WEIGHTS, **overrides})
    with pytest.MonkeyPatch.context() as patch, _quiet_official(), torch.random.fork_rng():
        patch.chdir(workdir)
        torch.manual_seed(0)  # its initialisation draws from torch's global generator
        model = official.model.REARM(config, side.dataset)
    setattr(model, OFFICIAL_USER_GRAPH, to_torch_sparse(graphs["user_homogeneous"]))
    setattr(model, OFFICIAL_ITEM_GRAPH, to_torch_sparse(graphs["item_homogeneous"]))
    perturb_parameters(model)
    return model.eval()


def training_batch(subset: Subset, size: int = BATCH_SIZE, seed: int = 3):
    """(users, positives, negatives), each (size,) int64: training pairs and, per pair, an item
    the user has in no split (the official sampler's rule)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(np.flatnonzero(subset.split == 0), size=size, replace=False)
    users, positives = subset.users[pick], subset.items[pick]
    negatives = np.empty_like(users)
    for n, user in enumerate(users):
        seen = set(subset.items[subset.users == user].tolist())
        negatives[n] = rng.choice([i for i in range(subset.n_items) if i not in seen])
    return (torch.from_numpy(users), torch.from_numpy(positives), torch.from_numpy(negatives))


def official_loss_terms(model, batch, n_users: int) -> dict:
    """The official loss terms for (users, positives, negatives); its items are offset by n_users
    and come as (B, 2) [user, user] / [positive, negative] pairs."""
    users, positives, negatives = batch
    with torch.no_grad():
        _, bpr, _, contrastive, orthogonal = model.loss(
            torch.stack((users, users), dim=1), torch.stack((positives, negatives), dim=1) + n_users)
    return {"bpr": float(bpr), "contrastive": float(contrastive), "orthogonal": float(orthogonal)}


def official_scores(model, users) -> np.ndarray:
    with torch.no_grad():
        return model.full_sort_predict([torch.as_tensor(users)]).double().numpy()


def write_mmrec_features(subset: Subset, root: Path) -> None:
    """Feature files where our model's host stand-in looks: <data_path><dataset>/<name>_feat.npy."""
    subset.write_features(root / SUBSET_NAME)


def our_config(setting: Setting, data_root: Path, modalities: tuple = ("image", "audio"), **overrides) -> dict:
    """Our model's configuration for `setting` (our key names), CPU, no graph cache, the feature
    files of write_mmrec_features for `modalities` (the subset's two, in order)."""
    model = setting.model
    return dict(dict(
        dataset=SUBSET_NAME, data_path=f"{data_root}{os.sep}", device="cpu",
        vision_feature_file=f"{modalities[0]}_feat.npy", text_feature_file=f"{modalities[1]}_feat.npy",
        embedding_size=64, n_layers=model["n_layers"], n_uu_layers=model["n_uu_layers"],
        n_ii_layers=model["n_ii_layers"], rank=model["rank"], self_attn_dropout=model["s_drop"],
        cross_attn_dropout=model["m_drop"], cl_temperature=model["cl_tmp"],
        cl_loss_weight=LOSS_WEIGHTS["cl_loss_weight"], ort_loss_weight=LOSS_WEIGHTS["diff_loss_weight"],
        reg_weight=model["reg_weight"], rearm_cache_dir=False, **setting.graph,
    ), **overrides)



def graph_as_csr(graph) -> sp.csr_matrix:
    """Our model's SparseGraph (torch sparse CSR) as float64 scipy CSR."""
    matrix = graph.forward_matrix
    return sp.csr_matrix((matrix.values().double().numpy(), matrix.col_indices().numpy(),
                          matrix.crow_indices().numpy()), shape=tuple(matrix.shape))



def as_float64(pair):
    """Deep copies of (official, ours) computing in float64, so that the comparison measures
    the algorithms and not float32 rounding (scores reach ~60 after the official LayerNorm,
    where one float32 ulp is 4e-6). The official graphs are not buffers, so they are converted
    by hand; ours move with the model."""
    theirs = copy.deepcopy(pair[0]).double()
    for name in (OFFICIAL_USER_GRAPH, OFFICIAL_ITEM_GRAPH, "cal_bpr"):
        setattr(theirs, name, getattr(theirs, name).double())
    # the official normalised interaction graph carries a float32 epsilon (degree + 1e-7, one ulp
    # at degree 1); test_interaction_graph_matches_official checks it, here both use ours
    theirs.norm_adj = to_torch_sparse(graph_as_csr(pair[1].interaction_graph)).double()
    ours = copy.deepcopy(pair[1]).double()
    return theirs, ours


