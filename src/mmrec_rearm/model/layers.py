"""Building blocks of the REARM network (paper Sec. 4.2-4.4): sparse propagation, the attention
used on item features, and the modal-shared meta-network.

Shapes use ``n`` for nodes (users or items), ``d`` for the embedding width, ``k`` for the rank of
the meta-network's transforms and ``M`` for the number of modalities.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graphs.inputs import binary_matrix

__all__ = [
    "to_torch_csr",
    "SparseGraph",
    "propagate",
    "homogeneous_propagation",
    "lightgcn",
    "normalized_interaction_graph",
    "scalar_attention",
    "ScalarAttention",
    "MatrixAttention",
    "LowRankGenerator",
    "MetaNetwork",
]

# Elements of the (rows, d, d) attention tensors handled at once (128 rows at d = 64, 2 MB of
# float32): small enough for a chunk's temporaries to stay in the CPU cache, large enough for the
# batched kernels to stay efficient (measurement: docs/choices.md, "attention form").
ATTENTION_CHUNK_ELEMENTS = 1 << 19
# On a GPU there is no cache to fit and every chunk costs kernel launches: larger chunks.
ATTENTION_CHUNK_ELEMENTS_GPU = 1 << 25


# --------------------------------------------------------------------------------------------
# Sparse propagation (eq. 4, 10)


def to_torch_csr(matrix: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy matrix as a float32 torch sparse CSR tensor (int64 indices: the fastest CPU kernel)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise for a fixed matrix
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data),
            size=matrix.shape, device=device, check_invariants=False)


class SparseGraph(nn.Module):
    """A fixed weighted graph ``A`` (n, n) kept as torch sparse CSR together with ``A^T``.

    The transpose is materialised once so that the backward pass of :func:`propagate` is one more
    CSR product instead of a conversion per call; a symmetric matrix keeps one tensor.
    Both are non-persistent buffers: they move and change dtype with the model that holds them
    (``model.to(device)``, ``model.double()``) but stay out of its ``state_dict``, since the
    graphs are a pure function of the data (rebuilt or read from the cache).
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", dtype=torch.float32):
        super().__init__()
        matrix = sp.csr_matrix(matrix)
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"SparseGraph needs a square matrix, got shape {matrix.shape}")
        self.shape = matrix.shape
        self.nnz = int(matrix.nnz)
        self.symmetric = (abs(matrix - matrix.T) > 0).nnz == 0
        self.register_buffer("forward_matrix", to_torch_csr(matrix, device).to(dtype), persistent=False)
        transpose = None if self.symmetric else to_torch_csr(matrix.T.tocsr(), device).to(dtype)
        self.register_buffer("transpose_buffer", transpose, persistent=False)

    @property
    def transpose_matrix(self) -> torch.Tensor:
        """``A^T`` (n, n) sparse CSR; the same tensor as ``forward_matrix`` when ``A`` is symmetric."""
        return self.forward_matrix if self.symmetric else self.transpose_buffer

    @classmethod
    def from_tensors(cls, forward: torch.Tensor, transpose: torch.Tensor) -> "SparseGraph":
        """A graph from ready torch CSR tensors ``A`` and ``A^T`` (n, n), e.g. an edge-dropped copy
        of another graph; no check that ``transpose`` is ``A^T``."""
        graph = cls.__new__(cls)
        nn.Module.__init__(graph)
        graph.shape = tuple(forward.shape)
        graph.nnz = int(forward.values().numel())
        graph.symmetric = transpose is forward
        graph.register_buffer("forward_matrix", forward, persistent=False)
        graph.register_buffer("transpose_buffer", None if graph.symmetric else transpose, persistent=False)
        return graph

    @property
    def device(self) -> torch.device:
        return self.forward_matrix.device

    @property
    def dtype(self) -> torch.dtype:
        return self.forward_matrix.dtype

    def __deepcopy__(self, memo) -> "SparseGraph":
        # torch cannot deep-copy sparse CSR tensors (no storage); clone them part by part
        copy = SparseGraph.__new__(SparseGraph)
        nn.Module.__init__(copy)
        copy.shape, copy.nnz, copy.symmetric = self.shape, self.nnz, self.symmetric
        for name, tensor in self._buffers.items():
            copy.register_buffer(name, None if tensor is None else _clone_csr(tensor), persistent=False)
        copy.train(self.training)
        memo[id(self)] = copy
        return copy

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, symmetric={self.symmetric}"


def _clone_csr(tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(tensor.crow_indices().clone(), tensor.col_indices().clone(),
                                       tensor.values().clone(), size=tensor.shape, check_invariants=False)


class _Propagate(torch.autograd.Function):
    """``A @ x`` with the gradient ``A^T @ g``, both as CSR x dense products."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, graph: SparseGraph) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        return graph.forward_matrix @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.graph.transpose_matrix @ grad.contiguous(), None


def propagate(graph: SparseGraph, x: torch.Tensor) -> torch.Tensor:
    """One message-passing step ``A x``: (n, n) sparse times (n, c) dense -> (n, c).

    The graph must already be on ``x``'s device and dtype (it moves with its module): no copy is
    made here, so a forgotten ``model.to(device)`` is an error instead of a transfer per call."""
    if graph.device != x.device or graph.dtype != x.dtype:
        raise ValueError(f"graph {tuple(graph.shape)} is {graph.dtype} on {graph.device} but the features are "
                         f"{x.dtype} on {x.device}; move the model (and so its graphs) with model.to(...)")
    return _Propagate.apply(x.contiguous(), graph)


def homogeneous_propagation(graph: SparseGraph, h: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Eq. (4): ``h^(l+1) = G h^(l)`` on a homogeneous (user-user or item-item) graph, returning the
    LAST layer ``h^(L)`` (the paper keeps the final layer output). ``h``: (n, c) -> (n, c).
    ``n_layers = 0`` returns ``h`` unchanged."""
    for _ in range(n_layers):
        h = propagate(graph, h)
    return h


def lightgcn(graph: SparseGraph, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Eq. (10)-(11): LightGCN on the normalised interaction graph, averaged over layers 0..L.
    ``x``: (n_users + n_items, c) -> (n_users + n_items, c)."""
    total = x
    layer = x
    for _ in range(n_layers):
        layer = propagate(graph, layer)
        total = total + layer
    return total / (n_layers + 1)


def normalized_interaction_graph(interactions: sp.spmatrix, self_loops: bool = False,
                                 norm: str = "sym") -> sp.csr_matrix:
    """The symmetric bipartite graph of eq. (10): ``D^-1/2 [[0, R], [R^T, 0]] D^-1/2``.

    ``interactions``: (n_users, n_items), any non-zero counts as one edge (duplicates merged).
    Returns (n_users + n_items, n_users + n_items) float32 CSR with entries
    ``1 / sqrt(|N_u| |N_i|)`` (the paper's lambda_n). A node without edges keeps an empty row
    (the official code adds 1e-7 to the degree for the same effect).

    ``self_loops=True`` normalises ``A + I`` instead (GCN's renormalisation, used by MGDCF and
    DiffMM): the degrees count the self-loop, every node keeps a diagonal entry ``1 / (|N_v| + 1)``.
    ``norm='rw'`` gives the row-normalised ``D^-1 A`` (MICRO's LightGCN adjacency, with
    ``self_loops``): every row with an edge sums to 1.
    """
    if norm not in ("sym", "rw"):
        raise ValueError(f"normalisation {norm!r}: use 'sym' (D^-1/2 A D^-1/2) or 'rw' (D^-1 A)")
    r = binary_matrix(interactions)
    n_users, n_items = r.shape
    adj = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    adj.resize((n_users + n_items, n_users + n_items))
    if self_loops:
        adj = (adj + sp.identity(n_users + n_items, dtype=np.float32, format="csr")).tocsr()
    degree = np.asarray(adj.sum(axis=1), dtype=np.float64).ravel()
    inverse = np.zeros_like(degree)
    nonzero = degree > 0
    inverse[nonzero] = degree[nonzero] ** (-0.5 if norm == "sym" else -1.0)
    scale = sp.diags(inverse)  # float64 products, one rounding to float32 at the end
    out = ((scale @ adj @ scale) if norm == "sym" else (scale @ adj)).tocsr().astype(np.float32)
    out.sort_indices()
    return out


# --------------------------------------------------------------------------------------------
# Attention over the d feature dimensions (eq. 5-9)


def _chunk_rows(n_rows: int, d: int, device: torch.device) -> int:
    budget = ATTENTION_CHUNK_ELEMENTS if device.type == "cpu" else ATTENTION_CHUNK_ELEMENTS_GPU
    return max(1, min(n_rows, budget // max(1, d * d)))


def _bit_weights(device: torch.device) -> torch.Tensor:
    """(8,) uint8 ``[1, 2, 4, .., 128]``, made on ``device`` itself (a literal would be a host
    tensor copied to the device on every call)."""
    ones = torch.ones(8, dtype=torch.uint8, device=device)
    return torch.bitwise_left_shift(ones, torch.arange(8, dtype=torch.uint8, device=device))


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool (c, m) -> uint8 (c, ceil(m / 8)), entry j in bit j % 8 of byte j // 8."""
    c, m = mask.shape
    if m % 8:
        mask = torch.cat([mask, mask.new_zeros(c, 8 - m % 8)], dim=1)
    return (mask.view(c, -1, 8).to(torch.uint8) * _bit_weights(mask.device)).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`: uint8 (c, ceil(m / 8)) -> bool (c, m)."""
    bits = (packed[:, :, None] & _bit_weights(packed.device)).ne_(0)
    return bits.view(packed.shape[0], -1)[:, :m]


class _DropoutAttention(torch.autograd.Function):
    """Attention with dropout on the weights, each node's d scalars being the tokens.

    For node n: ``P = softmax_j(q_i k_j)``, ``o_i = s * sum_j M_ij P_ij v_j`` with the keep mask
    ``M`` and ``s = 1 / (1 - p)``. Only the keep mask, packed 8 entries per byte ((n, ceil(d*d/8))
    uint8: on Baby 13.5 MB per block instead of 108 MB as bool), and the (n, d) inputs/outputs are
    kept for backward; ``P`` is recomputed chunk by chunk, so no float (n, d, d) tensor outlives
    a chunk. Gradients (``G = P * (s M v_j - o_i)``)::

        dv_j = s sum_i M_ij P_ij do_i
        dq_i = do_i (s sum_j M_ij P_ij v_j k_j - o_i sum_j P_ij k_j)
        dk_j = s v_j sum_i M_ij P_ij do_i q_i - sum_i P_ij do_i q_i o_i
    """

    @staticmethod
    def forward(ctx, q, k, v, keep, dropout_p):  # type: ignore[override]
        n, d = q.shape
        scale = 1.0 / (1.0 - dropout_p)
        out = torch.empty_like(q)
        packed = torch.empty((n, (d * d + 7) // 8), dtype=torch.uint8, device=q.device)
        step = _chunk_rows(n, d, q.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            p = torch.softmax(q[a:b, :, None] * k[a:b, None, :], dim=-1)
            if keep is None:  # drawn chunk by chunk so the uniform numbers stay in cache
                kept = torch.rand(p.shape, device=p.device).ge_(dropout_p)
            else:
                kept = keep[a:b]
            packed[a:b] = _pack_bits(kept.reshape(b - a, d * d))
            p.mul_(kept)
            out[a:b] = torch.matmul(p, v[a:b, :, None]).squeeze(-1)
        out.mul_(scale)
        ctx.save_for_backward(q, k, v, packed, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, packed, out = ctx.saved_tensors
        s = ctx.scale
        n, d = q.shape
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        step = _chunk_rows(n, d, q.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            qa, ka, va, ga, oa = q[a:b], k[a:b], v[a:b], grad_out[a:b], out[a:b]
            p = torch.softmax(qa[:, :, None] * ka[:, None, :], dim=-1)  # (c, d, d)
            kept = p * _unpack_bits(packed[a:b], d * d).view(b - a, d, d)
            gq = ga * qa
            # one batched product for the two reductions over i that use the kept weights
            left = torch.matmul(kept.transpose(1, 2), torch.stack((ga, gq), dim=-1))  # (c, d, 2)
            dv[a:b] = s * left[..., 0]
            dk[a:b] = s * va * left[..., 1] - torch.matmul(p.transpose(1, 2), (gq * oa)[..., None]).squeeze(-1)
            dq[a:b] = ga * (s * torch.matmul(kept, (va * ka)[..., None]).squeeze(-1)
                            - oa * torch.matmul(p, ka[..., None]).squeeze(-1))
        return dq, dk, dv, None, None


def _plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # torch's fused kernel; q already carries the score scale, so the kernel's own scale is 1.
    try:
        return F.scaled_dot_product_attention(q[..., None], k[..., None], v[..., None], scale=1.0)[..., 0]
    except TypeError:  # torch < 2.1 has no `scale`; with a head width of 1 its default is 1 anyway
        return F.scaled_dot_product_attention(q[..., None], k[..., None], v[..., None])[..., 0]


def scalar_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                     training: bool = False, scale: float = 1.0,
                     keep_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention whose tokens are the d scalars of each node (eq. 5, 7, 8).

    ``q, k, v``: (n, d). For every node, ``out_i = sum_j softmax_j(scale * q_i k_j) v_j`` -> (n, d).
    In training mode a dropout of rate ``dropout_p`` is applied to the attention weights, as
    ``nn.MultiheadAttention`` does (kept weights scaled by 1 / (1 - p); p = 1 zeroes them all,
    so the output is 0). ``keep_mask`` (bool (n, d, d)) fixes the dropout draw (tests); otherwise
    it is drawn from torch's global generator.
    """
    if q.shape != k.shape or q.shape != v.shape or q.dim() != 2:
        raise ValueError(f"scalar_attention needs three (n, d) tensors, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if scale != 1.0:
        q = q * scale
    if not training or dropout_p == 0.0:
        return _plain_attention(q, k, v)
    if dropout_p == 1.0:
        return q * 0.0 + k.sum() * 0.0 + v.sum() * 0.0  # zero output that still belongs to the graph
    return _DropoutAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), keep_mask,
                                   float(dropout_p))


class ScalarAttention(nn.Module):
    """The official code's attention block: ``nn.MultiheadAttention(embed_dim=1, num_heads=1)``
    applied to (n, d, 1) inputs, i.e. q, k, v and the output are scalar affine maps of each of
    the d feature values, score scale 1/sqrt(1), dropout on the attention weights.

    Same parameters and initialisation as that module (``qkv_weight`` (3, 1) = in_proj_weight,
    ``qkv_bias`` (3,), ``out_weight`` (1, 1), ``out_bias`` (1,)) and the same numbers in eval
    mode, computed without its generic reshapes. ``forward(query (n, d), context (n, d)) -> (n, d)``;
    self-attention passes the same tensor twice (eq. 5), cross-attention the other modality as
    ``query`` (eq. 7-8).
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = float(dropout)
        self.qkv_weight = nn.Parameter(torch.empty(3, 1))
        self.qkv_bias = nn.Parameter(torch.zeros(3))
        self.out_weight = nn.Parameter(torch.empty(1, 1))
        self.out_bias = nn.Parameter(torch.zeros(1))
        nn.init.xavier_uniform_(self.qkv_weight)
        nn.init.kaiming_uniform_(self.out_weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        w, b = self.qkv_weight[:, 0], self.qkv_bias
        q = query * w[0] + b[0]
        k = context * w[1] + b[1]
        v = context * w[2] + b[2]
        out = scalar_attention(q, k, v, self.dropout, self.training)
        return out * self.out_weight[0, 0] + self.out_bias[0]

    def extra_repr(self) -> str:
        return f"tokens=scalar, dropout={self.dropout}"


class MatrixAttention(nn.Module):
    """The paper's written form of eq. (5)/(7)/(8): ``W^Q, W^K, W^V`` in R^{d x d},
    ``out = softmax((x_q W^Q)^T (x_c W^K) / sqrt(d)) (x_c W^V)`` with the d dimensions as tokens,
    dropout on the attention weights, no output projection. (n, d), (n, d) -> (n, d).
    """

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = float(dropout)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return scalar_attention(self.query(query), self.key(context), self.value(context),
                                self.dropout, self.training, scale=self.scale)

    def extra_repr(self) -> str:
        return f"tokens=scalar, projections=matrix, dropout={self.dropout}"


# --------------------------------------------------------------------------------------------
# Modal-shared meta-network (eq. 13-15)


class LowRankGenerator(nn.Module):
    """A meta knowledge learner g(.) of eq. (14): ``Linear(d, d k) -> PReLU -> Linear(d k, d k)``,
    then each row L2-normalised (official). (n, d) -> (n, d k)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim * rank)
        self.act = nn.PReLU()
        self.out = nn.Linear(dim * rank, dim * rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.act(self.hidden(x))), p=2, dim=-1)


class MetaNetwork(nn.Module):
    """Modal-shared meta-network of one side (users or items), eq. (13)-(15).

    * eq. (13) ``compress``: ``Linear(M d -> d)`` of the concatenated modal features -> (n, d);
      the official code detaches its output, so this layer gets no gradient (``input_grad=False``).
    * eq. (14) two generators give ``W1`` (n, d, k) and ``W2`` (n, k, d); each gets its mean over
      all n nodes added as a bias, then a softmax over the d axis (``W1``) / the k axis (``W2``).
    * eq. (15) ``share = ids W1 W2`` row-wise: ids (n, d) -> (n, k) -> (n, d).

    ``forward(features (n, M d), ids (n, d) or (r, d), rows=None)``: the transforms are generated
    for all n nodes (the bias needs them), but applied only to ``rows`` (index tensor) when given,
    in which case ``ids`` holds those rows' IDs.
    """

    def __init__(self, n_modalities: int, dim: int, rank: int, input_grad: bool = False):
        super().__init__()
        self.dim, self.rank = dim, rank
        self.input_grad = input_grad
        self.compress = nn.Linear(n_modalities * dim, dim)
        self.first = LowRankGenerator(dim, rank)
        self.second = LowRankGenerator(dim, rank)

    def transforms(self, features: torch.Tensor, rows: Optional[torch.Tensor] = None):
        """``(W1, W2)`` after bias and softmax: (r, d, k) and (r, k, d) for the selected rows."""
        knowledge = self.compress(features)
        if not self.input_grad:
            knowledge = knowledge.detach()
        w1 = self.first(knowledge).view(-1, self.dim, self.rank)
        w2 = self.second(knowledge).view(-1, self.rank, self.dim)
        bias1, bias2 = w1.mean(dim=0), w2.mean(dim=0)
        if rows is not None:
            w1, w2 = w1[rows], w2[rows]
        return torch.softmax(w1 + bias1, dim=1), torch.softmax(w2 + bias2, dim=1)

    def forward(self, features: torch.Tensor, ids: torch.Tensor,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        w1, w2 = self.transforms(features, rows)
        middle = torch.bmm(ids.unsqueeze(1), w1)  # (r, 1, k)
        return torch.bmm(middle, w2).squeeze(1)  # (r, d)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, input_grad={self.input_grad}"
