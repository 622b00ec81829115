"""Exact values of the whole model on a hand-made fixture, against a float64 reference written here
from the paper's equations (Ma et al., ACM MM 2025, Sec. 4) with plain torch operations, following
docs/choices.md wherever our defaults take the official code's form over the paper's text.

Runs in every CI (no official clone, no MMRec). Fixture: 5 users (user 4 has no training item),
5 items (item 4 has no training interaction), 2 modalities (3-d "image", 2-d "text" features),
d = 4, rank k = 2; the two homogeneous graphs and the training interactions are written out below,
every parameter is set to seeded random values (biases, LayerNorm and PReLU included). The graphs
are float32 in the model (graphs.py's contract), so their values are chosen exactly representable:
dyadic weights, and node degrees 1 or 4, so that eq. (10)'s 1 / sqrt(|N_u| |N_i|) is exact. Checked to
1e-10 in float64: the users' initial modal preferences (Sec. 4.1), the normalised interaction graph
(eq. 10), the final user and item representations (eq. 3-19), the BPR, contrastive and orthogonal
terms (eq. 21, 12, 17) of one batch, every gradient, and every parameter after one step of Adam
(MMRec's optimiser, ``weight_decay`` 0) with our decoupled decay against AdamW's update written out
(eq. 22: ``lambda_p ||Theta||^2`` realised as decoupled weight decay, as in the official code).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model import rearm as rearm_module  # noqa: E402
from mmrec_rearm.model.rearm import REARM  # noqa: E402

TOL = 1e-10

# training interactions: user -> items (user 4: none; item 4: nobody's); degrees 1 or 4
TRAIN = {0: [0, 1, 2, 3], 1: [0], 2: [0], 3: [0], 4: []}
N_USERS, N_ITEMS = 5, 5
# homogeneous graphs G_uu, G_ii (Sec. 4.2.3), not symmetric, written out by hand
G_UU = np.array([[0.5, 0.25, 0.25, 0.0, 0.0],
                 [0.125, 0.625, 0.25, 0.0, 0.0],
                 [0.0, 0.25, 0.5, 0.25, 0.0],
                 [0.375, 0.0, 0.0, 0.625, 0.0],
                 [0.0, 0.0, 0.0, 0.0, 1.0]])
G_II = np.array([[0.75, 0.25, 0.0, 0.0, 0.0],
                 [0.125, 0.5, 0.375, 0.0, 0.0],
                 [0.0, 0.25, 0.5, 0.25, 0.0],
                 [0.0, 0.0, 0.375, 0.625, 0.0],
                 [0.25, 0.0, 0.0, 0.0, 0.75]])
# item features (float32 data, as MMRec loads them)
IMAGE = np.array([[0.9, -0.2, 0.4], [0.1, 0.8, -0.5], [-0.3, 0.3, 0.7], [0.6, 0.6, 0.1], [-0.7, 0.2, 0.2]],
                 dtype=np.float32)
TEXT = np.array([[0.5, -1.0], [1.5, 0.2], [-0.4, 0.9], [0.3, 0.3], [0.8, -0.6]], dtype=np.float32)
SETTINGS = dict(embedding_size=4, rank=2, n_layers=2, n_uu_layers=1, n_ii_layers=2, cl_temperature=0.5,
                cl_loss_weight=0.3, ort_loss_weight=0.7, reg_weight=0.1, self_attn_dropout=0.0,
                cross_attn_dropout=0.0, user_knn_k=2, item_knn_k=2)
BATCH = ([0, 1, 3, 0], [1, 0, 0, 2], [4, 3, 2, 4])  # users (0 twice), positives, negatives
# Adam's first step is lr * g / (|g| + eps): where the true gradient is 0 (the attention biases that
# LayerNorm and softmax cancel) float64 roundoff in g (~1e-15) is amplified by lr / eps, so lr stays
# small enough to keep that far below the tolerance; a wrong lr or decay still moves by >= 1e-6
LR, BETAS, EPS = 1e-4, (0.9, 0.999), 1e-8


def build(tmp_path, monkeypatch) -> REARM:
    """Our model on the fixture, float64, as constructed (features, graphs, initial values)."""
    folder = tmp_path / "exact"
    folder.mkdir()
    np.save(folder / "image_feat.npy", IMAGE)
    np.save(folder / "text_feat.npy", TEXT)
    # the graphs of this fixture are the hand-written ones, not built from features
    hand = SimpleNamespace(user_homogeneous=sp.csr_matrix(G_UU), item_homogeneous=sp.csr_matrix(G_II))
    monkeypatch.setattr(rearm_module, "build_homogeneous_graphs", lambda *a, **k: (hand, False))
    users = [u for u, items in TRAIN.items() for _ in items]
    items = [i for its in TRAIN.values() for i in its]
    config = dict(dataset="exact", data_path=f"{tmp_path}/", vision_feature_file="image_feat.npy",
                  text_feature_file="text_feat.npy", rearm_cache_dir=False, **SETTINGS)
    torch.manual_seed(0)
    return REARM(config, ArrayDataLoader(users, items, N_USERS, N_ITEMS)).double()


@pytest.fixture
def model(tmp_path, monkeypatch):
    model = build(tmp_path, monkeypatch)
    # every parameter away from its structured initial value (zero biases, LayerNorm 1/0, PReLU 0.25)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return model


# --------------------------------------------------------------------------------------------
# the reference: the paper's equations with plain torch operations, float64


def training_matrix() -> np.ndarray:
    r = np.zeros((N_USERS, N_ITEMS))
    for u, items in TRAIN.items():
        r[u, items] = 1.0
    return r


def interaction_graph() -> torch.Tensor:
    """Eq. (10): entries 1 / sqrt(|N_u| |N_i|) between a user and its training items."""
    r = training_matrix()
    n_u, n_i = r.sum(1), r.sum(0)
    a = np.zeros((N_USERS + N_ITEMS,) * 2)
    for u in range(N_USERS):
        for i in range(N_ITEMS):
            if r[u, i]:
                a[u, N_USERS + i] = a[N_USERS + i, u] = 1.0 / math.sqrt(n_u[u] * n_i[i])
    return torch.tensor(a)


def prelu(x, a):
    return torch.clamp(x, min=0) + a * torch.clamp(x, max=0)


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def scalar_attention(p, prefix, query, context):
    """Eq. (5) / (7)-(8) in the official form (docs/choices.md): the d values of a node are the
    tokens, q / k / v and the output are scalar affine maps, softmax over the keys, scale 1."""
    w, b = p[f"{prefix}.qkv_weight"][:, 0], p[f"{prefix}.qkv_bias"]
    q, k, v = query * w[0] + b[0], context * w[1] + b[1], context * w[2] + b[2]
    weights = torch.softmax(q[:, :, None] * k[:, None, :], dim=-1)  # (n, d queries, d keys)
    out = (weights * v[:, None, :]).sum(-1)
    return out * p[f"{prefix}.out_weight"][0, 0] + p[f"{prefix}.out_bias"][0]


def meta_share(p, side, features, ids, d, k):
    """Eq. (13)-(15): compress (detached, official), two generators with a mean bias and a softmax
    over d (W1) / k (W2), applied to the ID row vector."""
    knowledge = (features @ p[f"{side}_meta.compress.weight"].T + p[f"{side}_meta.compress.bias"]).detach()

    def generate(name):
        hidden = prelu(knowledge @ p[f"{side}_meta.{name}.hidden.weight"].T + p[f"{side}_meta.{name}.hidden.bias"],
                       p[f"{side}_meta.{name}.act.weight"])
        return unit_rows(hidden @ p[f"{side}_meta.{name}.out.weight"].T + p[f"{side}_meta.{name}.out.bias"])

    w1 = generate("first").reshape(-1, d, k)
    w2 = generate("second").reshape(-1, k, d)
    w1 = torch.softmax(w1 + w1.mean(0), dim=1)
    w2 = torch.softmax(w2 + w2.mean(0), dim=1)
    return torch.einsum("nd,ndk,nke->ne", ids, w1, w2)


def reference_forward(p, d=4, k=2):
    """-> (users (4, 3d), items (4, 3d), modal features F (8, 2d) after LightGCN)."""
    a = p["act.weight"]
    norm = (p["norm.weight"], p["norm.bias"])

    def side(ids, raw, proj, graph, layers):
        modal = [raw[m] @ p[f"{proj}.{m}.weight"].T + p[f"{proj}.{m}.bias"] for m in range(2)]  # eq. 3
        h = torch.cat([ids] + modal, dim=1)
        for _ in range(layers):  # eq. 4, last layer
            h = graph @ h
        h = unit_rows(h)  # rows L2-normalised (official)
        return h[:, :d], h[:, d:2 * d], h[:, 2 * d:]

    u_id, u_img, u_txt = side(p["user_id.weight"], [p["user_raw.0.weight"], p["user_raw.1.weight"]],
                              "user_proj", torch.tensor(G_UU), SETTINGS["n_uu_layers"])
    i_id, i_img, i_txt = side(p["item_id.weight"], [p["item_raw.0.weight"], p["item_raw.1.weight"]],
                              "item_proj", torch.tensor(G_II), SETTINGS["n_ii_layers"])
    # eq. 5-6: self-attention, residual, shared LayerNorm and PReLU
    s_img = prelu(layer_norm(i_img + scalar_attention(p, "self_attn.0", i_img, i_img), *norm), a)
    s_txt = prelu(layer_norm(i_txt + scalar_attention(p, "self_attn.1", i_txt, i_txt), *norm), a)
    # eq. 7-9: cross-attention, the query from the other modality
    c_img = prelu(layer_norm(s_img + scalar_attention(p, "cross_attn.0", s_txt, s_img), *norm), a)
    c_txt = prelu(layer_norm(s_txt + scalar_attention(p, "cross_attn.1", s_img, s_txt), *norm), a)
    # users' modal preferences: PReLU only (not refined)
    features = torch.cat([torch.cat([prelu(u_img, a), prelu(u_txt, a)], 1), torch.cat([c_img, c_txt], 1)])
    ids = torch.cat([u_id, i_id])
    graph = interaction_graph()
    f_layers, i_layers = [features], [ids]
    for _ in range(SETTINGS["n_layers"]):  # eq. 10-11: mean over layers 0..L
        f_layers.append(graph @ f_layers[-1])
        i_layers.append(graph @ i_layers[-1])
    f_all = torch.stack(f_layers).mean(0)
    i_all = torch.stack(i_layers).mean(0)
    reps = []
    for side_name, rows in (("user", slice(0, N_USERS)), ("item", slice(N_USERS, None))):
        f, idv = f_all[rows], i_all[rows]
        share = meta_share(p, side_name, f, idv, d, k)
        parts = [prelu(f[:, :d], a) + idv, prelu(f[:, d:], a) + idv, prelu(share, a) + idv]  # eq. 16, 18
        reps.append(torch.cat(parts, 1))  # eq. 19, official order
    return reps[0], reps[1], f_all


def reference_losses(p):
    users_rep, items_rep, f_all = reference_forward(p)
    users, pos, neg = (torch.tensor(x) for x in BATCH)
    d, tau = SETTINGS["embedding_size"], SETTINGS["cl_temperature"]
    y_pos = (users_rep[users] * items_rep[pos]).sum(1)
    y_neg = (users_rep[users] * items_rep[neg]).sum(1)
    bpr = (-torch.log(torch.sigmoid(y_pos - y_neg))).mean()  # eq. 21, mean over the batch

    def info_nce(rows):  # eq. 12: cosine / tau, the positive on the diagonal, mean over rows
        a, b = unit_rows(f_all[rows, :d]), unit_rows(f_all[rows, d:])
        logits = a @ b.T / tau
        return (-torch.log(torch.exp(logits.diagonal()) / torch.exp(logits).sum(1))).mean()

    def orthogonal(rows):  # eq. 17, official variant: centred, detached row norms + 1e-6, mean
        x, y = f_all[rows, :d], f_all[rows, d:]
        x, y = x - x.mean(0), y - y.mean(0)
        x = x / (x.norm(dim=1, keepdim=True).detach() + 1e-6)
        y = y / (y.norm(dim=1, keepdim=True).detach() + 1e-6)
        return ((x.T @ y) ** 2).mean()

    unique_users = torch.tensor(sorted(set(BATCH[0])))
    unique_items = torch.tensor(sorted(set(BATCH[1]) | set(BATCH[2]))) + N_USERS
    cl = SETTINGS["cl_loss_weight"] * (info_nce(unique_users) + info_nce(unique_items))
    ort = SETTINGS["ort_loss_weight"] * (orthogonal(users) + orthogonal(pos + N_USERS))
    return bpr, cl, ort


def parameters_of(model) -> dict:
    """Our parameters as independent float64 leaves, under their state_dict names."""
    return {name: value.detach().clone().requires_grad_(True) for name, value in model.state_dict().items()
            if value.is_floating_point()}


# --------------------------------------------------------------------------------------------
# the checks


def max_diff(a, b) -> float:
    return float((a.detach() - b.detach()).abs().max())


def test_graphs_are_the_hand_written_ones_and_eq_10(model):
    assert max_diff(model.user_graph.forward_matrix.to_dense(), torch.tensor(G_UU)) == 0.0
    assert max_diff(model.item_graph.forward_matrix.to_dense(), torch.tensor(G_II)) == 0.0
    assert max_diff(model.interaction_graph.forward_matrix.to_dense(), interaction_graph()) == 0.0


def test_initial_raw_features_and_user_preferences(tmp_path, monkeypatch):
    state = build(tmp_path, monkeypatch).state_dict()
    for m, features in enumerate((IMAGE, TEXT)):
        x = features.astype(np.float64)
        expected = np.zeros((N_USERS, x.shape[1]))
        for u, its in TRAIN.items():
            if its:  # Sec. 4.1: mean of the user's training items; none -> zeros (docs/choices.md)
                expected[u] = x[its].mean(0)
        # computed in float32 at construction (the model's dtype then), hence 1e-7
        np.testing.assert_allclose(state[f"user_raw.{m}.weight"].numpy(), expected, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(state[f"item_raw.{m}.weight"].numpy(), x)


def report(record_property, name: str, value: float) -> None:
    print(f"[exact] {name} = {value:.3g}")
    record_property(name, value)


def test_representations_equal_the_reference(model, record_property):
    p = parameters_of(model)
    expected_users, expected_items, _ = reference_forward(p)
    users, items = model.eval()()
    assert users.shape == (N_USERS, 12) and items.shape == (N_ITEMS, 12)
    report(record_property, "max_representation_diff", max(max_diff(users, expected_users),
                                                            max_diff(items, expected_items)))
    assert max_diff(users, expected_users) <= TOL
    assert max_diff(items, expected_items) <= TOL
    scores = model.full_sort_predict((torch.tensor([0, 4]),))
    assert max_diff(scores, expected_users[[0, 4]] @ expected_items.T) <= TOL


def test_loss_terms_gradients_and_one_optimiser_step_equal_the_reference(model, record_property):
    p = parameters_of(model)
    expected = reference_losses(p)
    sum(expected).backward()

    model.train()
    adam = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)  # as MMRec builds it
    adam.zero_grad()
    bpr, cl, ort, reg = model.calculate_loss(torch.tensor(BATCH))
    report(record_property, "max_loss_term_diff",
           max(abs(float(g.detach()) - float(w.detach())) for g, w in zip((bpr, cl, ort), expected)))
    for got, want in zip((bpr, cl, ort), expected):
        assert abs(float(got.detach()) - float(want.detach())) <= TOL, (float(got.detach()), float(want.detach()))
        assert float(want.detach()) > 1e-3  # every term matters
    assert float(reg) == 0.0  # the decay acts in the optimiser step
    (bpr + cl + ort + reg).backward()

    grads = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            grads[key] = param.grad
    for name in list(grads):  # raw tables: row blocks, one state_dict entry
        if ".block" in name:
            table = name.rsplit(".block", 1)[0]
            blocks = [g for n, g in sorted(grads.items()) if n.startswith(table + ".block")]
            grads[table + ".weight"] = torch.cat(blocks)
    report(record_property, "max_gradient_diff",
           max(max_diff(grads[name], ref.grad) for name, ref in p.items() if ref.grad is not None))
    for name, ref in p.items():
        if ref.grad is None:  # the compression layer (eq. 13) is detached: no gradient on either side
            assert name.endswith(("compress.weight", "compress.bias")), name
            assert grads[name] is None, name
        else:
            assert max_diff(grads[name], ref.grad) <= TOL, name

    before = {name: value.detach().clone() for name, value in p.items()}
    adam.step()
    lam = SETTINGS["reg_weight"]
    after = model.state_dict()
    worst = 0.0
    for name, ref in p.items():
        if ref.grad is None:
            expected_value = before[name]  # no gradient: neither stepped nor decayed (as AdamW)
        else:
            g = ref.grad
            m_hat = (1 - BETAS[0]) * g / (1 - BETAS[0])  # first step: bias-corrected moments
            v_hat = (1 - BETAS[1]) * g * g / (1 - BETAS[1])
            expected_value = before[name] * (1 - LR * lam) - LR * m_hat / (v_hat.sqrt() + EPS)
        assert max_diff(after[name], expected_value) <= TOL, name
        worst = max(worst, max_diff(after[name], expected_value))
    report(record_property, "max_parameter_diff_after_one_step", worst)
