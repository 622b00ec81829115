"""The Table-2 baselines ApeGNN, MGDN and MIG-GT (mmrec_rearm.baselines) on tiny hand-made inputs
and the seeded demo dataset: propagation against closed forms, edge dropout, losses, settings,
presets and the MMRec scoring contract. Parity with the authors' code: tests/test_parity_*.py."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm.baselines.apegnn import ApeGNN, hop_weights  # noqa: E402
from mmrec_rearm.baselines.base import EdgeDropout  # noqa: E402
from mmrec_rearm.baselines.settings import Settings  # noqa: E402
from mmrec_rearm.baselines.markov_diffusion import (diffusion_gamma, info_bpr_loss, markov_diffusion,  # noqa: E402
                                             with_uniform_negatives)
from mmrec_rearm.baselines.mgdn import MGDN  # noqa: E402
from mmrec_rearm.baselines.miggt import MIGGT, PRESETS  # noqa: E402
from mmrec_rearm.data import read_dataset  # noqa: E402
from mmrec_rearm.errors import ConfigError, DatasetError  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model import layers as L  # noqa: E402
from mmrec_rearm.synth import make_demo_dataset  # noqa: E402

MODELS = (ApeGNN, MGDN, MIGGT)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = make_demo_dataset(tmp_path_factory.mktemp("baselines"), name="demo", n_users=150, n_items=120, seed=0)
    data = read_dataset(folder)
    coo = data.interactions.tocoo()
    config = {"device": "cpu", "data_path": f"{folder.parent}/", "dataset": "demo",
              "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy"}
    return data, coo, config


def build(cls, demo, **settings):
    data, coo, config = demo
    return cls({**config, **settings}, ArrayDataLoader(coo.row, coo.col, data.n_users, data.n_items))


def batch(demo, size=64, seed=0):
    data, coo, _ = demo
    rng = np.random.default_rng(seed)
    pick = rng.choice(coo.nnz, size=size, replace=False)
    return torch.stack([torch.from_numpy(coo.row[pick]).long(), torch.from_numpy(coo.col[pick]).long(),
                        torch.from_numpy(rng.integers(0, data.n_items, size)).long()])


def tiny_graph() -> sp.csr_matrix:
    # user 0: items 0, 1; user 1: item 1; user 2: nothing
    return sp.csr_matrix((np.ones(3), ([0, 0, 1], [0, 1, 1])), shape=(3, 2))


# --------------------------------------------------------------------------------------------
# graphs, edge dropout, diffusion, losses


def test_interaction_graph_with_self_loops_exact_values():
    adj = L.normalized_interaction_graph(tiny_graph(), self_loops=True).toarray()
    deg = np.array([3, 2, 1, 2, 3])  # edges + the self-loop: u0, u1, u2, i0, i1
    edges = [(0, 3), (0, 4), (1, 4)]
    expected = np.diag(1.0 / deg)
    for a, b in edges:
        expected[a, b] = expected[b, a] = 1 / math.sqrt(deg[a] * deg[b])
    np.testing.assert_allclose(adj, expected, rtol=1e-6)
    assert adj[2, 2] == 1.0  # a user without items keeps its own embedding only


def test_edge_dropout_keeps_scales_and_transposes_consistently():
    a = sp.random(7, 7, density=0.5, random_state=1, format="csr", dtype=np.float32)
    graph = L.SparseGraph(a)
    dropper = EdgeDropout(graph)
    assert dropper(0.0) is graph
    torch.manual_seed(0)
    dropped = dropper(0.4)
    forward = dropped.forward_matrix.to_dense()
    torch.testing.assert_close(dropped.transpose_matrix.to_dense(), forward.t())
    original = torch.tensor(a.toarray())
    kept = forward != 0
    torch.testing.assert_close(forward[kept], original[kept] / 0.6)
    assert 0 < int(kept.sum()) < a.nnz
    counts = [int((dropper(0.4).forward_matrix.values() != 0).sum()) for _ in range(200)]
    assert abs(np.mean(counts) / a.nnz - 0.6) < 0.03  # each entry kept with probability 1 - p
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropper(1.0)


def test_propagation_on_a_dropped_graph_has_the_right_gradient():
    a = sp.random(6, 6, density=0.5, random_state=2, format="csr", dtype=np.float32)
    torch.manual_seed(1)
    dropped = EdgeDropout(L.SparseGraph(a))(0.3).to(dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: L.propagate(dropped, t), (x,))


def test_markov_diffusion_equals_its_closed_form():
    adj = L.normalized_interaction_graph(tiny_graph(), self_loops=True)
    a = torch.tensor(adj.toarray(), dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    graph = L.SparseGraph(adj).to(dtype=torch.float64)
    alpha, beta, k = 0.3, 0.5, 3
    closed = (beta ** k * torch.matrix_power(a, k)
              + alpha * sum(beta ** i * torch.matrix_power(a, i) for i in range(k))) @ x
    torch.testing.assert_close(markov_diffusion(graph, x, k, alpha, beta), closed / diffusion_gamma(alpha, beta, k))
    assert diffusion_gamma(0.1, 0.9, 4) == pytest.approx(1.0)  # alpha + beta = 1: a weighted average
    assert diffusion_gamma(0.3, 0.5, 0) == 1.0
    assert torch.equal(markov_diffusion(graph, x, 0, alpha, beta), x)
    assert torch.autograd.gradcheck(lambda t: markov_diffusion(graph, t, 2, alpha, beta), (x,))


def test_info_bpr_with_one_negative_is_bpr_and_negatives_mix_host_and_uniform():
    torch.manual_seed(0)
    users, items = torch.randn(8, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    p, n = torch.randint(0, 30, (8,)), torch.randint(0, 30, (8, 1))
    expected = torch.nn.functional.softplus((users * items[n[:, 0]]).sum(-1) - (users * items[p]).sum(-1))
    torch.testing.assert_close(info_bpr_loss(users, items, p, n), expected)
    many = torch.randint(0, 30, (8, 5))  # 30 <= 40 * 5: scored through the full product
    logits = torch.cat([(users * items[p]).sum(-1, keepdim=True), torch.einsum("bd,bmd->bm", users, items[many])], 1)
    torch.testing.assert_close(info_bpr_loss(users, items, p, many), torch.logsumexp(logits, 1) - logits[:, 0])
    host = torch.arange(8)
    mixed = with_uniform_negatives(host, 5, n_items=30)
    assert mixed.shape == (8, 5) and torch.equal(mixed[:, 0], host) and int(mixed.max()) < 30
    assert with_uniform_negatives(host, 1, 30).shape == (8, 1)


def test_hop_weights_heat_and_ppr():
    t = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    heat = hop_weights(t, 3, "heat")
    expected = torch.tensor([[math.exp(-tv) * tv ** k / math.factorial(k) for k in range(4)] for tv in (0.5, 2.0)],
                            dtype=torch.float64)
    torch.testing.assert_close(heat, expected)
    assert float(hop_weights(t, 40, "heat").sum(1).min()) == pytest.approx(1.0)  # a Poisson distribution
    ppr = hop_weights(t[:1], 2, "ppr")
    torch.testing.assert_close(ppr, torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# the models on the demo data


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_parameter_learns_and_losses_are_finite(demo, cls):
    torch.manual_seed(0)
    model = build(cls, demo)
    model.train()
    terms = model.calculate_loss(batch(demo))
    assert all(torch.isfinite(term) for term in terms)
    sum(terms).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"parameters without gradient: {silent}"


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_scores_are_computed_once_per_evaluation_and_match_predict(demo, cls, monkeypatch):
    torch.manual_seed(0)
    model = build(cls, demo)
    model.eval()
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda: calls.append(1) or forward())
    first = model.full_sort_predict((torch.arange(10),))
    second = model.full_sort_predict((torch.arange(10, 20),))
    assert len(calls) == 1 and first.shape == (10, model.n_items) and torch.isfinite(second).all()
    pairs = (torch.arange(10), torch.arange(10))
    torch.testing.assert_close(model.predict(pairs), first[torch.arange(10), torch.arange(10)])
    with torch.no_grad():
        next(model.parameters()).add_(0.1)  # an optimizer step: the cached scores are stale
    model.full_sort_predict((torch.arange(10),))
    assert len(calls) == 2
    model.train()
    model.eval()
    model.full_sort_predict((torch.arange(10),))
    assert len(calls) == 3


def test_apegnn_initial_locality_follows_the_degree(demo):
    model = build(ApeGNN, demo)
    degree = np.diff(model.interactions.indptr)
    expected = degree / (degree + 1.0)  # sigmoid(log(d + eps)) = (d + eps) / (d + eps + 1)
    np.testing.assert_allclose(model.user_t.detach().numpy()[:, 0], expected, rtol=1e-5)
    concat = build(ApeGNN, demo, pool="concat", n_layers=3)
    users, items = concat.representations()
    assert users.shape == (concat.n_users, 4 * 64) and items.shape == (concat.n_items, 4 * 64)


def test_dropouts_act_in_training_only(demo):
    torch.manual_seed(0)
    model = build(ApeGNN, demo, message_dropout=0.3, edge_drop_rate=0.3)
    model.train()
    assert not torch.equal(model.hops(), model.hops())
    model.eval()
    assert torch.equal(model.hops(), model.hops())
    mgdn = build(MGDN, demo)
    mgdn.train()
    assert not torch.equal(mgdn.forward()[0], mgdn.forward()[0])


def test_miggt_transformer_mixes_the_node_with_sampled_items(demo):
    torch.manual_seed(0)
    model = build(MIGGT, demo, num_samples=4)
    h = torch.randn(model.n_users + model.n_items, 64)
    out = model.global_transformer(h)
    assert out.shape == (h.shape[0], 5, 64)
    # 0.9 of each row is the row itself; the attention adds 0.1 of a convex mix of the sequence
    lo, hi = 0.9 * h + 0.1 * h.min(), 0.9 * h + 0.1 * h.max()
    assert bool(((out[:, 0] >= lo - 1e-5) & (out[:, 0] <= hi + 1e-5)).all())


# --------------------------------------------------------------------------------------------
# settings and presets


def test_settings_resolve_presets_by_dataset_name():
    s = Settings({"dataset": "Sports", "k_e": 1}, "MIGGT", presets=PRESETS)
    assert s.integer("k_v", 0, -1) == 3 and s.integer("k_e", 0, -1) == 1
    assert s.resolved.origin["k_v"] == "preset" and s.resolved.origin["k_e"] == "config"
    other = Settings({"dataset": "tiktok"}, "MIGGT", presets=PRESETS)
    assert other.integer("k_v", 0, -1) == PRESETS["baby"]["k_v"]
    assert "MIGGT: no preset for dataset 'tiktok'" in other.summary()


@pytest.fixture(scope="module")
def clothing(tmp_path_factory):
    """A demo dataset whose folder is named like a preset (presets go by the dataset name)."""
    folder = make_demo_dataset(tmp_path_factory.mktemp("presets"), name="clothing", n_users=80, n_items=60, seed=1)
    data = read_dataset(folder, inter_file="clothing.inter")
    coo = data.interactions.tocoo()
    config = {"device": "cpu", "data_path": f"{folder.parent}/", "dataset": "clothing",
              "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy"}
    return data, coo, config


def test_miggt_applies_the_dataset_preset_and_checks_the_learning_rate(clothing, caplog):
    with caplog.at_level(logging.INFO, logger="mmrec_rearm.baselines.miggt"):
        model = build(MIGGT, clothing, learning_rate=0.01, learning_rate_scheduler=[0.99, 1])
    assert (model.k_e, model.k_t, model.k_v, model.num_samples) == (2, 2, 0, 20)
    assert model.text_encoder[0].out_features == 2048  # feat_hidden_units of the clothing preset
    assert "MIGGT preset 'clothing' for dataset 'clothing'" in caplog.text
    assert any(r.levelno == logging.WARNING and "learning_rate=0.001" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.baselines.miggt"):
        build(MIGGT, clothing, learning_rate=0.001, learning_rate_scheduler=[0.999, 1], k_v=-1)
    assert not caplog.records


def test_settings_refuse_bad_values_naming_the_key(demo):
    with pytest.raises(ConfigError, match="MGDN config key 'x_drop_rate'.*\\[0, 1\\)"):
        build(MGDN, demo, x_drop_rate=1.0)
    with pytest.raises(ConfigError, match="ApeGNN config key 'kernel' must be one of heat, ppr"):
        build(ApeGNN, demo, kernel="gauss")
    with pytest.raises(ConfigError, match="'n_layers' has the list value"):
        build(ApeGNN, demo, n_layers=[1, 2])
    with pytest.raises(ConfigError, match="MIGGT config key 'use_rp' must be true or false"):
        build(MIGGT, demo, use_rp="maybe")


def test_miggt_needs_item_features(demo):
    with pytest.raises(DatasetError, match="MIGGT needs item features"):
        build(MIGGT, demo, vision_feature_file="missing.npy", text_feature_file="missing.npy")
