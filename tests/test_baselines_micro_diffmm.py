"""The MICRO and DiffMM plug-ins on the stand-in host (no MMRec): graphs, settings, the per-epoch
hooks, the denoisers' separate optimizer, losses and evaluation. Tiny synthetic data; CPU."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm import cache  # noqa: E402
from mmrec_rearm.baselines import item_knn  # noqa: E402
from mmrec_rearm.baselines.diffmm import DiffMM, drop_edges  # noqa: E402
from mmrec_rearm.baselines.gaussian_diffusion import Denoiser, GaussianDiffusion  # noqa: E402
from mmrec_rearm.baselines.micro import MICRO, contrast_all_items  # noqa: E402
from mmrec_rearm.errors import ConfigError  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.layers import normalized_interaction_graph  # noqa: E402
from mmrec_rearm.synth import generate_demo  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class Demo:
    def __init__(self, root, name="demo"):
        demo = generate_demo(n_users=60, n_items=45, seed=1, image_dim=16, text_dim=12, per_user=(6, 10))
        folder = root / name
        folder.mkdir(parents=True)
        for modality, values in demo.features.items():
            np.save(folder / f"{modality}_feat.npy", values)
        train = demo.labels == 0
        self.root, self.name = root, name
        self.users, self.items = demo.users[train], demo.items[train]
        self.n_users, self.n_items = int(demo.users.max()) + 1, int(demo.items.max()) + 1
        self.features = demo.features

    def config(self, **overrides) -> dict:
        config = dict(dataset=self.name, data_path=f"{self.root}/", vision_feature_file="image_feat.npy",
                      text_feature_file="text_feat.npy", train_batch_size=32, micro_cache_dir=False,
                      diffusion_batch_size=25, denoise_dims=[32], knn_k=5)
        config.update(overrides)
        return config

    def build(self, cls, **overrides):
        torch.manual_seed(0)
        return cls(self.config(**overrides), ArrayDataLoader(self.users, self.items, self.n_users, self.n_items))

    def batch(self, seed=0, size=32) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(self.users), size)
        return torch.tensor(np.stack([self.users[rows], self.items[rows], rng.integers(0, self.n_items, size)]))


@pytest.fixture
def demo(tmp_path) -> Demo:
    return Demo(tmp_path)


# --------------------------------------------------------------------------------------------
# item kNN graphs (MICRO's fixed graphs) and their cache


def _dense_knn(features: np.ndarray, k: int) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    keep = np.zeros_like(sims)
    for i, row in enumerate(sims):
        top = np.argsort(-row, kind="stable")[:k]
        keep[i, top] = row[top]
    return keep


@pytest.mark.parametrize("norm", ["sym", "rw", "none"])
def test_knn_graph_is_the_normalised_top_k_cosine_graph(norm):
    features = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    s = _dense_knn(features.astype(np.float64), 4)
    degree = s.sum(1)
    expected = {"sym": s / np.sqrt(np.outer(degree, degree)), "rw": s / degree[:, None], "none": s}[norm]
    got = item_knn.knn_graph(features, 4, norm).toarray()
    assert np.abs(got - expected).max() < 1e-6
    assert (np.count_nonzero(got, axis=1) == 4).all()


def test_knn_graph_gives_a_zero_feature_row_only_its_self_loop():
    features = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    features[3] = 0
    graph = item_knn.knn_graph(features, 3)
    assert np.isfinite(graph.data).all()
    assert graph[3].indices.tolist() == [3] and graph[:, 3].nonzero()[0].tolist() == [3]  # nobody else's neighbour


def test_item_knn_graphs_are_cached_by_content(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    features = {"image_feat": rng.normal(size=(20, 4)).astype(np.float32),
                "text_feat": rng.normal(size=(20, 3)).astype(np.float32)}
    built = []
    real = item_knn.knn_graph
    monkeypatch.setattr(item_knn, "knn_graph", lambda *a, **k: built.append(1) or real(*a, **k))
    first, hit = item_knn.load_or_build_item_knn(features, 3, "sym", str(tmp_path))
    assert not hit and len(built) == 2
    again, hit = item_knn.load_or_build_item_knn(features, 3, "sym", str(tmp_path))
    assert hit and len(built) == 2
    for name in features:
        assert (first[name] != again[name]).nnz == 0
    assert not item_knn.load_or_build_item_knn(features, 4, "sym", str(tmp_path))[1]  # other k
    features["text_feat"][0, 0] += 1.0
    assert not item_knn.load_or_build_item_knn(features, 3, "sym", str(tmp_path))[1]  # other bytes
    kinds = {entry["key"] for entry in cache.entries(tmp_path)}
    assert len(kinds) == 3


def test_content_key_separates_kinds_and_params():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(3, 2)}
    key = cache.content_key("x", arrays, {"k": 1})
    assert key == cache.content_key("x", {"a": arrays["a"].copy()}, {"k": 1})
    assert key != cache.content_key("y", arrays, {"k": 1})
    assert key != cache.content_key("x", arrays, {"k": 2})


# --------------------------------------------------------------------------------------------
# MICRO


def test_micro_interaction_graph_rows_sum_to_one():
    r = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0]], dtype=np.float32))
    graph = normalized_interaction_graph(r, self_loops=True, norm="rw")  # MICRO's D^-1 (A + I)
    assert graph.shape == (5, 5)
    assert np.allclose(np.asarray(graph.sum(1)).ravel(), 1.0)
    assert graph[1].indices.tolist() == [1]  # a user without items keeps its self-loop


def test_contrast_all_items_matches_a_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(7, 3), torch.randn(7, 3)
    ua, ub = torch.nn.functional.normalize(a), torch.nn.functional.normalize(b)
    within, between = torch.exp(ua @ ua.T / 0.5), torch.exp(ua @ ub.T / 0.5)
    expected = -torch.log(between.diag() / (within.sum(1) + between.sum(1) - within.diag())).mean()
    for block in (2, 7, 100):
        assert torch.allclose(contrast_all_items(a, b, 0.5, block), expected, atol=1e-6)


def test_micro_trains_its_graph_at_the_first_batch_of_an_epoch_only(demo):
    model = demo.build(MICRO)
    model.train()
    model.pre_epoch_processing()
    terms = model.calculate_loss(demo.batch(0))
    assert len(terms) == 3 and all(torch.isfinite(t) for t in terms)
    sum(terms).backward()
    assert model.raw_features[0].grad.abs().sum() > 0 and model.feature_proj[1].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    sum(model.calculate_loss(demo.batch(1))).backward()
    assert model.raw_features[0].grad is None and model.feature_proj[0].weight.grad is None
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_micro_evaluation_is_cached_until_the_weights_change(demo):
    model = demo.build(MICRO)
    model.eval()
    users = torch.arange(10)
    first = model.full_sort_predict((users,))
    assert first.shape == (10, demo.n_items) and torch.isfinite(first).all()
    assert model.full_sort_predict((users,)) is not None and model._eval_cache is not None
    cached = model._eval_cache
    model.full_sort_predict((users,))
    assert model._eval_cache is cached
    with torch.no_grad():
        model.item_embedding.weight.add_(1.0)
    assert not torch.allclose(model.full_sort_predict((users,)), first)


def test_micro_settings_are_validated(demo):
    with pytest.raises(ConfigError, match="loss_ratio.*cl_weight"):
        demo.build(MICRO, loss_ratio=0.1)
    with pytest.raises(ConfigError, match="knn_k"):
        demo.build(MICRO, knn_k=demo.n_items)
    with pytest.raises(ConfigError, match="list value"):
        demo.build(MICRO, cl_weight=[0.01, 0.1])
    mf = demo.build(MICRO, cf_model="mf", weight_size=[])
    assert torch.isfinite(sum(mf.calculate_loss(demo.batch()))).all()


def test_micro_builds_its_fixed_graphs_once(demo, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mmrec_rearm.baselines.micro"):
        demo.build(MICRO, micro_cache_dir=str(tmp_path / "c"))
        demo.build(MICRO, micro_cache_dir=str(tmp_path / "c"))
    messages = [r.getMessage() for r in caplog.records if "item kNN graphs" in r.getMessage()]
    assert "built" in messages[0] and "read from the cache" in messages[1]


# --------------------------------------------------------------------------------------------
# DiffMM


def test_diffmm_presets_follow_the_dataset_name(tmp_path):
    tiktok = Demo(tmp_path, "tiktok").build(DiffMM)
    assert (tiktok.reg_weight, tiktok.keep_rate, tiktok.cl_mode) == (1e-4, 0.5, "main")
    assert isinstance(tiktok.transforms[0].linear, torch.nn.Linear)
    other = Demo(tmp_path, "other").build(DiffMM, reg_weight=0.5)
    assert (other.reg_weight, other.keep_rate, other.cl_mode) == (0.5, 1.0, "modal")  # baby fallback
    with pytest.raises(ConfigError, match="ssl_reg.*cl_weight"):
        Demo(tmp_path, "x").build(DiffMM, ssl_reg=0.1)


def test_diffmm_denoisers_are_trained_by_their_own_optimizer_only(demo):
    model = demo.build(DiffMM)
    ours = {id(p) for p in model.parameters()}
    assert not any(id(p) in ours for p in model.denoisers.parameters())
    assert not any(k.startswith("denoisers") or k.startswith("feature") for k in model.state_dict())
    before = [p.detach().clone() for p in model.denoisers.parameters()]
    recommender = [p.detach().clone() for p in model.parameters()]
    model.pre_epoch_processing()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.denoisers.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(recommender, model.parameters()))
    assert "DiffMM diffusion" in model.post_epoch_processing()
    for graph in model.modal_graphs:  # one generated edge per user (both directions) + self-loops
        assert graph.nnz <= 2 * demo.n_users + demo.n_users + demo.n_items


def test_diffmm_double_moves_the_denoisers_too(demo):
    model = demo.build(DiffMM).double()
    assert all(p.dtype == torch.float64 for p in model.denoisers.parameters())
    model.pre_epoch_processing()
    assert all(torch.isfinite(t) for t in model.calculate_loss(demo.batch()))


def test_diffmm_losses_and_scores_are_finite(demo):
    for mode in ("modal", "main"):
        model = demo.build(DiffMM, cl_mode=mode, feature_transform="mixed")
        model.train()
        model.pre_epoch_processing()
        terms = model.calculate_loss(demo.batch())
        assert len(terms) == 3 and all(torch.isfinite(t) for t in terms) and terms[2] > 0
        sum(terms).backward()
        model.eval()
        scores = model.full_sort_predict((torch.arange(5),))
        assert scores.shape == (5, demo.n_items) and torch.isfinite(scores).all()


def test_diffmm_self_loop_graph_and_edge_dropout():
    r = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0]], dtype=np.float32))
    graph = normalized_interaction_graph(r, self_loops=True)  # DiffMM's D^-1/2 (A + I) D^-1/2
    dense = graph.toarray()
    assert np.allclose(dense, dense.T) and np.isclose(dense[0, 0], 1 / 3) and np.isclose(dense[1, 1], 1.0)
    assert (drop_edges(graph, 1.0) != graph).nnz == 0
    big = normalized_interaction_graph(sp.random(200, 300, density=0.05, format="csr", random_state=0))
    kept = drop_edges(big, 0.5, torch.Generator().manual_seed(0))
    assert 0.4 < kept.nnz / big.nnz < 0.6
    ratio = kept.multiply(big.power(-1)).tocsr()
    assert np.allclose(ratio.data, 2.0)


def test_diffusion_schedule_and_sampling():
    diffusion = GaussianDiffusion(0.1, 1e-4, 0.02, 5)
    alpha_bar = diffusion.alphas_cumprod.numpy()
    assert np.all(np.diff(alpha_bar) < 0) and np.isclose(alpha_bar[0], 1 - 1e-4)
    x0 = torch.rand(4, 9)
    t = torch.tensor([0, 1, 2, 4])
    noised = diffusion.q_sample(x0, t, torch.zeros_like(x0))
    assert torch.allclose(noised, diffusion.sqrt_alphas_cumprod[t].float()[:, None] * x0)
    torch.manual_seed(0)
    model = Denoiser(9, [6], 4, dropout=0.5)
    assert torch.equal(diffusion.p_sample(model, x0), diffusion.p_sample(model, x0))  # no noise: deterministic
    elbo, condition = diffusion.training_losses(model, x0, torch.randn(9, 3), torch.randn(9, 3),
                                                steps=torch.zeros(4, dtype=torch.long), noise=torch.zeros_like(x0))
    assert elbo.dtype == torch.float64 and elbo.shape == condition.shape == (4,)
    with pytest.raises(ConfigError, match="noise_scale"):
        GaussianDiffusion(0.0, 1e-4, 0.02, 5)
