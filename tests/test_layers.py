"""Layers (eq. 3-15) and losses (eq. 12, 17, 21, 22) of REARM on tiny hand-made inputs."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
nn = torch.nn

from mmrec_rearm.model import layers as L  # noqa: E402
from mmrec_rearm.model.losses import (  # noqa: E402
    bpr_loss, info_nce, l2_penalty, orthogonal_loss, pairwise_sum)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def dense(graph: L.SparseGraph) -> torch.Tensor:
    return graph.forward_matrix.to_dense()


# --------------------------------------------------------------------------------------------
# propagation


def test_normalized_interaction_graph_exact_values():
    # user 0: items 0, 1 (item 1 given twice); user 1: item 1; user 2: nothing
    r = sp.coo_matrix((np.ones(4), ([0, 0, 0, 1], [0, 1, 1, 1])), shape=(3, 2))
    adj = L.normalized_interaction_graph(r).toarray()
    assert adj.shape == (5, 5) and adj.dtype == np.float32
    deg = {"u0": 2, "u1": 1, "i0": 1, "i1": 2}
    expected = np.zeros((5, 5), dtype=np.float32)
    expected[0, 3] = expected[3, 0] = 1 / math.sqrt(deg["u0"] * deg["i0"])
    expected[0, 4] = expected[4, 0] = 1 / math.sqrt(deg["u0"] * deg["i1"])
    expected[1, 4] = expected[4, 1] = 1 / math.sqrt(deg["u1"] * deg["i1"])
    np.testing.assert_allclose(adj, expected, rtol=1e-6)
    assert not adj[2].any()  # user without items: empty row, no NaN


def test_sparse_graph_keeps_transpose_and_shares_symmetric():
    a = sp.csr_matrix(np.array([[0, 2, 0], [0, 0, 3], [1, 0, 0]], dtype=np.float32))
    g = L.SparseGraph(a)
    assert g.shape == (3, 3) and g.nnz == 3
    torch.testing.assert_close(g.transpose_matrix.to_dense(), torch.tensor(a.T.toarray()))
    sym = L.SparseGraph(a + a.T)
    assert sym.transpose_matrix is sym.forward_matrix
    with pytest.raises(ValueError, match="square"):
        L.SparseGraph(sp.csr_matrix((2, 3), dtype=np.float32))


def test_sparse_graph_is_module_state_that_moves_but_is_not_saved():
    a = sp.csr_matrix(np.array([[0, 2, 0], [0, 0, 3], [1, 0, 0]], dtype=np.float32))
    holder = nn.Module()
    holder.graph = L.SparseGraph(a)
    assert holder.state_dict() == {}  # a pure function of the data: never in a checkpoint
    assert {name for name, _ in holder.named_buffers()} == {"graph.forward_matrix", "graph.transpose_buffer"}
    holder.double()  # dtype (and device) conversions reach the graphs with the module
    assert holder.graph.dtype == torch.float64 and holder.graph.transpose_matrix.dtype == torch.float64
    copied = copy.deepcopy(holder)  # sparse CSR tensors need their own deep copy
    assert copied.graph.forward_matrix is not holder.graph.forward_matrix
    torch.testing.assert_close(dense(copied.graph), dense(holder.graph))
    holder.to("meta")
    assert holder.graph.device.type == "meta" and copied.graph.device.type == "cpu"


def test_propagate_refuses_a_graph_on_another_device_or_dtype():
    g = L.SparseGraph(sp.csr_matrix(np.eye(3, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"float32 on cpu but the features are torch.float64 on cpu"):
        L.propagate(g, torch.ones(3, 2, dtype=torch.float64))
    g.to("meta")  # stands for another device: no silent copy of the graph per call
    with pytest.raises(ValueError, match=r"on meta but the features are torch.float32 on cpu.*model.to"):
        L.propagate(g, torch.ones(3, 2))


def test_propagate_gradcheck_float64_on_nonsymmetric_graph():
    a = sp.csr_matrix(np.array([[0, .5, .5, 0], [1, 0, 0, 0], [0, .2, 0, .8], [0, 0, 0, 0]]))
    g = L.SparseGraph(a, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: L.propagate(g, t), (x,))
    assert torch.autograd.gradcheck(lambda t: L.lightgcn(g, t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: L.homogeneous_propagation(g, t, 2), (x,))


def test_homogeneous_propagation_returns_last_layer_and_lightgcn_the_layer_mean():
    a = np.array([[0, 1], [1, 0]], dtype=np.float32)  # swap
    g = L.SparseGraph(sp.csr_matrix(a))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(L.homogeneous_propagation(g, x, 1), x.flip(0))  # eq. 4, last layer
    torch.testing.assert_close(L.homogeneous_propagation(g, x, 2), x)
    torch.testing.assert_close(L.homogeneous_propagation(g, x, 0), x)
    # eq. 11: (x + Ax + A^2 x) / 3
    torch.testing.assert_close(L.lightgcn(g, x, 2), (2 * x + x.flip(0)) / 3)
    torch.testing.assert_close(L.lightgcn(g, x, 0), x)


# --------------------------------------------------------------------------------------------
# attention


def _mha_pair(dropout: float = 0.3):
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(1, 1, dropout=dropout, batch_first=True)
    ours = L.ScalarAttention(dropout)
    with torch.no_grad():  # same random parameters, biases included
        mha.in_proj_bias.copy_(torch.randn(3))
        mha.out_proj.bias.copy_(torch.randn(1))
        ours.qkv_weight.copy_(mha.in_proj_weight)
        ours.qkv_bias.copy_(mha.in_proj_bias)
        ours.out_weight.copy_(mha.out_proj.weight)
        ours.out_bias.copy_(mha.out_proj.bias)
    return mha.eval(), ours.eval()


def test_scalar_attention_parameters_match_multihead_attention():
    mha = nn.MultiheadAttention(1, 1, batch_first=True)
    ours = L.ScalarAttention(0.1)
    assert ours.qkv_weight.shape == mha.in_proj_weight.shape == (3, 1)
    assert ours.qkv_bias.shape == mha.in_proj_bias.shape == (3,)
    assert ours.out_weight.shape == mha.out_proj.weight.shape == (1, 1)
    assert ours.out_bias.shape == mha.out_proj.bias.shape == (1,)
    assert not ours.qkv_bias.detach().any() and not ours.out_bias.detach().any()


@pytest.mark.parametrize("cross", [False, True])
def test_scalar_attention_equals_multihead_attention_in_eval_mode(cross):
    mha, ours = _mha_pair()
    x = torch.randn(37, 64)
    query = torch.randn(37, 64) if cross else x
    expected, _ = mha(query.unsqueeze(2), x.unsqueeze(2), x.unsqueeze(2), need_weights=False)
    got = ours(query, x)
    assert got.shape == (37, 64)
    torch.testing.assert_close(got, expected.squeeze(2), rtol=1e-5, atol=1e-6)


def test_dropout_attention_matches_reference_and_gradcheck():
    torch.manual_seed(0)
    n, d, p = 6, 5, 0.4
    q, k, v = (torch.randn(n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = torch.rand(n, d, d) >= p
    weights = torch.softmax(q[:, :, None] * k[:, None, :], dim=-1) * keep / (1 - p)
    reference = (weights @ v[:, :, None]).squeeze(-1)
    got = L.scalar_attention(q, k, v, p, training=True, keep_mask=keep)
    torch.testing.assert_close(got, reference)
    assert torch.autograd.gradcheck(
        lambda a, b, c: L.scalar_attention(a, b, c, p, training=True, keep_mask=keep), (q, k, v))


def test_dropout_attention_chunks_agree_with_one_chunk(monkeypatch):
    torch.manual_seed(1)
    q, k, v = (torch.randn(9, 4, requires_grad=True) for _ in range(3))
    keep = torch.rand(9, 4, 4) >= 0.5
    one = L.scalar_attention(q, k, v, 0.5, training=True, keep_mask=keep)
    g1 = torch.autograd.grad(one.sum(), (q, k, v))
    monkeypatch.setattr(L, "ATTENTION_CHUNK_ELEMENTS", 2 * 16)  # 2 rows per chunk
    many = L.scalar_attention(q, k, v, 0.5, training=True, keep_mask=keep)
    g2 = torch.autograd.grad(many.sum(), (q, k, v))
    torch.testing.assert_close(one, many)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_gpu_sized_chunks_give_the_same_attention_on_cpu(monkeypatch):
    """The GPU chunk budget (one large chunk) is exercised on the CPU: same values and gradients."""
    assert L._chunk_rows(5000, 64, torch.device("cpu")) == L.ATTENTION_CHUNK_ELEMENTS // 64 ** 2
    assert L._chunk_rows(5000, 64, torch.device("cuda")) == 5000  # a device object needs no GPU
    torch.manual_seed(2)
    q, k, v = (torch.randn(300, 16, requires_grad=True) for _ in range(3))
    keep = torch.rand(300, 16, 16) >= 0.3
    monkeypatch.setattr(L, "ATTENTION_CHUNK_ELEMENTS", 16 * 16 * 7)  # 7 rows per chunk
    small = L.scalar_attention(q, k, v, 0.3, training=True, keep_mask=keep)
    g_small = torch.autograd.grad(small.sum(), (q, k, v))
    monkeypatch.setattr(L, "ATTENTION_CHUNK_ELEMENTS", L.ATTENTION_CHUNK_ELEMENTS_GPU)
    large = L.scalar_attention(q, k, v, 0.3, training=True, keep_mask=keep)
    g_large = torch.autograd.grad(large.sum(), (q, k, v))
    torch.testing.assert_close(small, large)
    for a, b in zip(g_small, g_large):
        torch.testing.assert_close(a, b)


def test_bit_weights_are_made_on_the_device():
    weights = L._bit_weights(torch.device("cpu"))
    assert weights.dtype == torch.uint8 and weights.tolist() == [1, 2, 4, 8, 16, 32, 64, 128]
    mask = torch.rand(3, 21) > 0.5
    assert torch.equal(L._unpack_bits(L._pack_bits(mask), 21), mask)


def test_dropout_one_zeroes_attention_like_torch_dropout():
    _, ours = _mha_pair(dropout=1.0)
    ours.train()
    x = torch.randn(5, 8, requires_grad=True)
    out = ours(x, x)
    torch.testing.assert_close(out, ours.out_bias.expand(5, 8).detach())  # nn.Dropout(p=1) gives 0
    out.sum().backward()
    assert ours.qkv_weight.grad is not None and float(ours.qkv_weight.grad.abs().sum()) == 0.0


def test_training_mode_drops_weights_and_eval_mode_is_deterministic():
    _, ours = _mha_pair(dropout=0.5)
    x = torch.randn(20, 16)
    torch.testing.assert_close(ours(x, x), ours(x, x))
    ours.train()
    torch.manual_seed(0)
    a = ours(x, x)
    torch.manual_seed(0)
    b = ours(x, x)
    torch.testing.assert_close(a, b)  # the draw follows torch's global generator
    assert not torch.allclose(a, ours.eval()(x, x))


def test_scalar_attention_rejects_bad_input():
    with pytest.raises(ValueError, match="three"):
        L.scalar_attention(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dropout_p"):
        L.scalar_attention(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 1.5, True)


def test_matrix_attention_is_the_papers_formula():
    torch.manual_seed(2)
    att = L.MatrixAttention(6, dropout=0.2).eval()
    xq, xc = torch.randn(4, 6), torch.randn(4, 6)
    q, k, v = xq @ att.query.weight.T, xc @ att.key.weight.T, xc @ att.value.weight.T
    expected = (torch.softmax(q[:, :, None] * k[:, None, :] / math.sqrt(6), dim=-1) @ v[:, :, None]).squeeze(-1)
    torch.testing.assert_close(att(xq, xc), expected, rtol=1e-5, atol=1e-6)
    assert {name for name, _ in att.named_parameters()} == {"query.weight", "key.weight", "value.weight"}


# --------------------------------------------------------------------------------------------
# meta-network


def test_low_rank_generator_rows_are_unit_vectors():
    g = L.LowRankGenerator(4, 3)
    out = g(torch.randn(7, 4))
    assert out.shape == (7, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))


def test_meta_network_shapes_and_formula():
    torch.manual_seed(4)
    n, d, k, m = 9, 4, 2, 2
    meta = L.MetaNetwork(m, d, k)
    feats, ids = torch.randn(n, m * d), torch.randn(n, d)
    w1, w2 = meta.transforms(feats)
    assert w1.shape == (n, d, k) and w2.shape == (n, k, d)
    torch.testing.assert_close(w1.sum(dim=1), torch.ones(n, k))  # softmax over the d axis
    torch.testing.assert_close(w2.sum(dim=1), torch.ones(n, d))  # softmax over the k axis
    knowledge = meta.compress(feats)
    raw1 = meta.first(knowledge).view(n, d, k)
    raw2 = meta.second(knowledge).view(n, k, d)
    e1 = torch.softmax(raw1 + raw1.mean(0), dim=1)
    e2 = torch.softmax(raw2 + raw2.mean(0), dim=1)
    expected = torch.einsum("nd,ndk,nke->ne", ids, e1, e2)  # eq. 15, row-vector form
    share = meta(feats, ids)
    assert share.shape == (n, d)
    torch.testing.assert_close(share, expected)
    rows = torch.tensor([7, 2])
    torch.testing.assert_close(meta(feats, ids[rows], rows), expected[rows])


@pytest.mark.parametrize("input_grad", [False, True])
def test_meta_network_input_gradient_switch(input_grad):
    meta = L.MetaNetwork(2, 4, 2, input_grad=input_grad)
    feats = torch.randn(5, 8, requires_grad=True)
    meta(feats, torch.randn(5, 4)).sum().backward()
    assert (meta.compress.weight.grad is not None) is input_grad
    assert (feats.grad is not None) is input_grad
    assert meta.first.hidden.weight.grad is not None


# --------------------------------------------------------------------------------------------
# losses


def test_bpr_loss_known_values():
    got = bpr_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # large gaps stay finite
    assert bpr_loss(torch.tensor([0.0]), torch.tensor([1000.0])).item() == pytest.approx(1000.0)


def test_bpr_loss_is_exact_for_gaps_above_twenty():
    """-ln sigmoid(pos - neg) in float64 for a gap of 25 is 25 + ln(1 + e^-25), with gradient
    sigmoid(25) = 1 - 1.4e-11 (the official LogSigmoid); a thresholded softplus gives 25 and 1."""
    neg = torch.tensor([25.0], dtype=torch.float64, requires_grad=True)
    loss = bpr_loss(torch.zeros(1, dtype=torch.float64), neg)
    loss.backward()
    assert loss.item() == 25.0 + math.log1p(math.exp(-25.0))
    assert neg.grad.item() == pytest.approx(1.0 / (1.0 + math.exp(-25.0)), rel=1e-15, abs=0)


def test_info_nce_known_values():
    eye = torch.eye(2)
    # positives cos 1, the other row cos 0: -log(e / (e + 1)) each
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    # temperature divides the cosine; scale of the rows does not matter
    assert info_nce(3 * eye, eye, 0.5).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    # swapped views: positives have cos 0, the negatives cos 1
    assert info_nce(eye, eye.flip(0), 1.0).item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)


def test_orthogonal_loss_known_values():
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    assert orthogonal_loss(a, b).item() == pytest.approx(0.0, abs=1e-12)
    # identical views: a^T a = [[4, 0], [0, 0]] on unit rows -> mean of squares 16 / 4
    assert orthogonal_loss(a, a).item() == pytest.approx(4.0 / (1 + 1e-6) ** 4, rel=1e-6)
    # column means are removed first: adding a constant changes nothing
    assert orthogonal_loss(a + 5.0, a).item() == pytest.approx(orthogonal_loss(a, a).item(), rel=1e-6)


def test_orthogonal_loss_norms_are_detached():
    a = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], requires_grad=True)
    b = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    orthogonal_loss(a, b).backward()
    # with detached norms, loss = mean(((a^T b) / (|a| |b|))^2) is quadratic in a through a^T b only
    scale = 1 / ((2 + 1e-6) * (3 + 1e-6))
    c00 = float((a.detach()[:, 0] * b[:, 0]).sum()) * scale  # entry (0, 0) of the normalised product
    grad00 = 2 * c00 / 4 * scale * b[:, 0]  # d mean(c^2) / d a[:, 0]; centring is a no-op here
    torch.testing.assert_close(a.grad[:, 0], grad00)


def test_pairwise_sum_and_l2_penalty():
    views = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    assert pairwise_sum(views, lambda x, y: x * y).item() == 2 + 4 + 8
    assert pairwise_sum(views[:1], lambda x, y: x * y).item() == 0.0
    assert l2_penalty([torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]).item() == 14.0
    with pytest.raises(ValueError, match="no parameters"):
        l2_penalty([])


def test_attention_without_dropout_has_gradients():
    q, k, v = (torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: L.scalar_attention(a, b, c, 0.0, True, scale=0.5), (q, k, v))
    expected = (torch.softmax(0.5 * q[:, :, None] * k[:, None, :], -1) @ v[:, :, None]).squeeze(-1)
    torch.testing.assert_close(L.scalar_attention(q, k, v, 0.0, True, scale=0.5), expected)


@pytest.mark.parametrize("m", [1, 8, 25, 4096])
def test_dropout_mask_bit_packing_round_trips(m):
    # the keep mask is stored 8 entries per byte between forward and backward
    mask = torch.rand(7, m, generator=torch.Generator().manual_seed(m)) >= 0.4
    packed = L._pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (7, (m + 7) // 8)
    assert torch.equal(L._unpack_bits(packed, m), mask)
    assert int(L._pack_bits(torch.tensor([[True, False, True] + [False] * 5]))[0, 0]) == 0b101
