"""MGDN, the Markov graph diffusion collaborative filter of MGDCF (Hu, Hooi, Qian, Fang, Xu:
"MGDCF: Distance Learning via Markov Graph Diffusion for Neural Collaborative Filtering", TKDE
2024; the REARM paper's Table 2 row "MGDN"), as an MMRec ``GeneralRecommender``.

Defaults follow the authors' PyTorch code (github CrawlScript/Torch-MGDCF, "Hetero-MGDCF": one
embedding table over users and items diffused on the bipartite graph with self-loops)::

    X  = dropout([E_users; E_items], x_drop_rate)                  (N, d), N = n_users + n_items
    Z  = dropout(markov_diffusion(A_hat, X, K, alpha, beta), z_drop_rate)   A_hat = D^-1/2 (A + I) D^-1/2
    L  = sum_batch InfoBPR(z_u, z_i, z_j1..z_jm) + l2_coef * (||Z_users||^2 + ||Z_items||^2) / 2

(``markov_diffusion`` and InfoBPR: :mod:`mmrec_rearm.baselines.markov_diffusion`; the edge dropout of
``A_hat`` is drawn once per forward.) The L2 term covers the output embeddings of ALL nodes, and
the ranking loss is summed over the batch, as in the authors' code. Every difference from it is
listed in docs/baselines.md.
"""
from __future__ import annotations

import logging
from typing import Any, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BaselineRecommender
from .markov_diffusion import info_bpr_loss, markov_diffusion, with_uniform_negatives

__all__ = ["MGDN"]

logger = logging.getLogger(__name__)


class MGDN(BaselineRecommender):
    """MGDCF for MMRec; settings: configs/model/MGDN.yaml."""

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        s = self.read_settings(config, n_layers=4)
        self.alpha = s.real("mgdcf_alpha", 0.1, 0.0)
        self.beta = s.real("mgdcf_beta", 0.9, 0.0)
        self.x_drop_rate = s.rate("x_drop_rate", 0.3)
        self.edge_drop_rate = s.rate("edge_drop_rate", 0.5)
        self.z_drop_rate = s.rate("z_drop_rate", 0.1)
        self.num_negs = s.integer("num_negs", 300, 1)
        self.l2_coef = s.real("l2_coef", 1e-4, 0.0)
        logger.info(s.summary())

        self.interaction_graph = self.training_graph(self_loops=True)
        d = self.embedding_size
        # authors: one (N, d) table drawn from N(0, 1) / sqrt(d)
        self.user_embedding = nn.Parameter(torch.randn(self.n_users, d) / np.sqrt(d))
        self.item_embedding = nn.Parameter(torch.randn(self.n_items, d) / np.sqrt(d))
        self.to(self.torch_device)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final representations ``Z``: users (n_users, d), items (n_items, d)."""
        x = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        x = F.dropout(x, self.x_drop_rate, self.training)
        graph = self.step_graph(self.edge_drop_rate)
        z = markov_diffusion(graph, x, self.n_layers, self.alpha, self.beta)
        z = F.dropout(z, self.z_drop_rate, self.training)
        return z[:self.n_users], z[self.n_users:]

    def loss_terms(self, users: torch.Tensor, positives: torch.Tensor,
                   negatives: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(summed InfoBPR, L2 term) for pairs ``users``/``positives`` (b,) and ``negatives`` (b, m)."""
        user_z, item_z = self.forward()
        ranking = info_bpr_loss(user_z[users], item_z, positives, negatives).sum()
        l2 = self.l2_coef * 0.5 * (user_z.pow(2).sum() + item_z.pow(2).sum())
        return ranking, l2

    def calculate_loss(self, interaction: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MMRec's training batch (3, b): users, positive items, negative items -> the loss terms."""
        negatives = with_uniform_negatives(interaction[2], self.num_negs, self.n_items)
        return self.loss_terms(interaction[0], interaction[1], negatives)
