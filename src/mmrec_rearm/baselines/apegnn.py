"""ApeGNN (Zhang, Zhu, Dong, Wang, Feng, Kharlamov, Tang: "ApeGNN: Node-Wise Adaptive Aggregation
in GNNs for Recommendation", WWW 2023) as an MMRec ``GeneralRecommender``.

LightGCN's propagation on ``A_hat = D^-1/2 A D^-1/2`` (no self-loops), with each node ``v``
weighting its hop ``k`` by a diffusion kernel of its own learnable "locality" ``t_v``::

    heat kernel (ApeGNN_HT):   theta_k(t) = exp(-t) t^k / k!
    PPR (ApeGNN_APPNP):        theta_k(t) = t (1 - t)^k
    e_v^(k) = theta_k(t_v) * (A_hat^k E)_v,   k = 0 .. K          (N, K+1, d)
    e_v     = pool_k e_v^(k)           (sum: the truncated diffusion sum_k theta_k A_hat^k E)
    t_v initialised to sigmoid(log(deg_v + eps)) from the node's training degree

Loss, as in the authors' code (github THUDM/ApeGNN): BPR on the pooled embeddings, mean over the
batch, plus ``reg_weight * (||e_u^(0)||^2 + ||e_i^(0)||^2 + ||e_j^(0)||^2) / 2 / b`` on the
batch rows' weighted hop-0 embeddings. Every difference from that code is listed in
docs/baselines.md.
"""
from __future__ import annotations

import logging
import math
from typing import Any, List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.layers import propagate
from ..model.losses import bpr_loss
from .base import BaselineRecommender

__all__ = ["ApeGNN", "hop_weights"]

logger = logging.getLogger(__name__)

KERNELS = ("heat", "ppr")
POOLS = ("sum", "mean", "concat", "final")


def hop_weights(t: torch.Tensor, n_layers: int, kernel: str) -> torch.Tensor:
    """``theta_k(t)`` for ``k = 0 .. K``: t (n, 1) -> (n, K+1)."""
    k = torch.arange(n_layers + 1, dtype=t.dtype, device=t.device)
    if kernel == "heat":
        factorial = torch.tensor([float(math.factorial(i)) for i in range(n_layers + 1)],
                                 dtype=t.dtype, device=t.device)
        return torch.exp(-t) * t.pow(k) / factorial
    return t * (1.0 - t).pow(k)


class ApeGNN(BaselineRecommender):
    """ApeGNN for MMRec; settings: configs/model/ApeGNN.yaml."""

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        s = self.read_settings(config, n_layers=2)
        self.kernel = s.choice("kernel", "heat", KERNELS)
        self.pool = s.choice("pool", "sum", POOLS)
        self.reg_weight = s.real("reg_weight", 1e-3, 0.0)
        self.degree_epsilon = s.real("degree_epsilon", 1e-7, 0.0, low_open=True)
        self.message_dropout = s.rate("message_dropout", 0.0)
        self.edge_drop_rate = s.rate("edge_drop_rate", 0.0)
        logger.info(s.summary())

        self.interaction_graph = self.training_graph(self_loops=False)
        d = self.embedding_size
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        degree = np.concatenate([np.diff(self.interactions.indptr),
                                 np.bincount(self.interactions.indices, minlength=self.n_items)])
        t = torch.sigmoid(torch.log(torch.from_numpy(degree.astype(np.float64)) + self.degree_epsilon))
        self.user_t = nn.Parameter(t[:self.n_users, None].float())
        self.item_t = nn.Parameter(t[self.n_users:, None].float())
        self.to(self.torch_device)

    def hops(self) -> torch.Tensor:
        """Weighted hop embeddings ``e^(k)`` of all nodes, users first: (N, K+1, d)."""
        embeddings = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        layers: List[torch.Tensor] = [embeddings]
        h = embeddings
        for _ in range(self.n_layers):
            layer = propagate(self.step_graph(self.edge_drop_rate), h)
            layers.append(layer)
            # authors: the dropped messages feed the next hop only; the hop's own output is kept whole
            h = F.dropout(layer, self.message_dropout, self.training)
        theta = hop_weights(torch.cat([self.user_t, self.item_t], dim=0), self.n_layers, self.kernel)
        return torch.stack(layers, dim=1) * theta.unsqueeze(-1)

    def pooled(self, hops: torch.Tensor) -> torch.Tensor:
        """(r, K+1, d) -> (r, d), or (r, (K+1) d) for ``concat``."""
        if self.pool == "sum":
            return hops.sum(dim=1)
        if self.pool == "mean":
            return hops.mean(dim=1)
        if self.pool == "concat":
            return hops.reshape(hops.shape[0], -1)
        return hops[:, -1]

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pooled representations: users (n_users, D), items (n_items, D)."""
        out = self.pooled(self.hops())
        return out[:self.n_users], out[self.n_users:]

    def calculate_loss(self, interaction: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MMRec's training batch (3, b): users, positive items, negative items -> (BPR, L2 term)."""
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        hops = self.hops()
        u, p, n = hops[users], hops[pos + self.n_users], hops[neg + self.n_users]
        u_e, p_e, n_e = self.pooled(u), self.pooled(p), self.pooled(n)
        bpr = bpr_loss((u_e * p_e).sum(-1), (u_e * n_e).sum(-1))
        reg = self.reg_weight * (u[:, 0].pow(2).sum() + p[:, 0].pow(2).sum() + n[:, 0].pow(2).sum()) / 2
        return bpr, reg / users.shape[0]
