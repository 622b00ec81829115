"""MIG-GT (Hu, Hooi, He, Wei: "Modality-Independent Graph Neural Networks with Global Transformers
for Multimodal Recommendation", AAAI 2025) as an MMRec ``GeneralRecommender``; MMRec name
``MIGGT`` (a Python class name cannot hold the paper's hyphen).

Modality-independent receptive fields (MIRF): one MGDCF Markov diffusion per source, each with
its own number of steps (:func:`~mmrec_rearm.baselines.markov_diffusion.markov_diffusion`, edge dropout
drawn per diffusion), on the bipartite graph with self-loops ``A_hat = D^-1/2 (A + I) D^-1/2``::

    T = MLP_t(text), V = MLP_v(image)          Linear-BN-PReLU-Dropout-Linear-BN-PReLU  (n_items, d)
    H = MGD_{K_e}([E_users; 0]) + MGD_{K_t}([0; T]) + MGD_{K_v}([0; V])        (N, d)
    (the image features are first projected to the text width by a fixed Gaussian matrix and
     L2-normalised: the authors' "use_rp")

Sampling-based global transformer (SGT): every node attends over itself and ``C`` items drawn
uniformly (again at every forward, evaluation included)::

    M_v = [h_v; h_{i_1}; ..; h_{i_C}]                                  (N, C+1, d)
    out = 0.1 * softmax(M W_q (M W_k)^T / sqrt(4)) M + 0.9 * M,   W_q, W_k: d -> 4
    z_v = out_v[0]

Loss: summed InfoBPR + ``l2_coef * (||Z_users||^2 + ||Z_items||^2) / 2`` + the transformer
unsmooth regularisation (TUR): for each pair (u, i), softmax cross-entropy of ``z_u`` against the
C+1 rows of ``out_i``, target the item's own row 0, summed. Defaults, per-dataset presets and
every difference from the authors' code (github CrawlScript/MIG-GT): docs/baselines.md.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BaselineRecommender
from .settings import Settings
from .markov_diffusion import info_bpr_loss, markov_diffusion, with_uniform_negatives

__all__ = ["MIGGT", "PRESETS", "feature_encoder", "random_projection"]

logger = logging.getLogger(__name__)

#: Attention width and residual share of the global transformer (fixed in the authors' code).
ATTENTION_UNITS = 4
ATTENTION_SHARE = 0.1

# The authors' per-dataset settings (mig_gt/configs/masked_mm_mgdcf_default_config.py); the
# learning rate and its decay are MMRec host keys, see MIGGT.yaml.
_TABLE: Dict[str, Tuple[Any, Any, Any]] = {
    "feat_hidden_units": (512, 512, 2048),
    "k_e": (4, 4, 2),
    "k_t": (2, 2, 2),
    "k_v": (1, 3, 0),
    "input_feat_drop_rate": (0.3, 0.2, 0.1),
    "feat_drop_rate": (0.3, 0.5, 0.4),
    "user_x_drop_rate": (0.3, 0.1, 0.1),
    "item_x_drop_rate": (0.3, 0.2, 0.1),
    "edge_drop_rate": (0.2, 0.5, 0.25),
    "z_drop_rate": (0.2, 0.2, 0.3),
    "l2_coef": (1e-5, 1e-4, 1e-5),
    "num_samples": (10, 10, 20),
}
#: dataset -> {key: value}
PRESETS: Dict[str, Dict[str, Any]] = {
    name: {key: values[i] for key, values in _TABLE.items()}
    for i, name in enumerate(("baby", "sports", "clothing"))
}
# dataset -> the authors' (learning rate, per-epoch decay): MMRec host keys, checked in the log only
_AUTHOR_LR = {"baby": (1e-2, 0.99), "sports": (1e-2, 0.99), "clothing": (1e-3, 0.999)}


def feature_encoder(in_dim: int, hidden: int, out_dim: int, drop_rate: float) -> nn.Sequential:
    """The authors' two-layer item feature MLP: (n, in_dim) -> (n, out_dim)."""
    layers = []
    for index, (a, b) in enumerate(((in_dim, hidden), (hidden, out_dim))):
        linear = nn.Linear(a, b)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(b), nn.PReLU(init=0.25)]
        if index == 0:
            layers.append(nn.Dropout(drop_rate))
    return nn.Sequential(*layers)


def random_projection(features: torch.Tensor, width: int) -> torch.Tensor:
    """``normalize(X R)`` with ``R ~ N(0, 1)`` (d_in, width) from torch's global generator:
    (n, d_in) -> (n, width), rows of unit L2 norm (1e-8 added to the norm, as the authors do)."""
    projected = features @ torch.randn(features.shape[1], width, dtype=features.dtype).to(features.device)
    return projected / (projected.norm(dim=-1, keepdim=True) + 1e-8)


class MIGGT(BaselineRecommender):
    """MIG-GT for MMRec; settings: configs/model/MIGGT.yaml."""

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        s = self.read_settings(config, presets=PRESETS)
        d = self.embedding_size
        hidden = s.integer("feat_hidden_units", 512, 1)
        self.k_e, self.k_t, self.k_v = (s.integer(k, 0, -1) for k in ("k_e", "k_t", "k_v"))
        self.alpha = s.real("mgdcf_alpha", 0.1, 0.0)
        self.beta = s.real("mgdcf_beta", 0.9, 0.0)
        self.input_feat_drop_rate = s.rate("input_feat_drop_rate", 0.3)
        feat_drop_rate = s.rate("feat_drop_rate", 0.3)
        self.user_x_drop_rate = s.rate("user_x_drop_rate", 0.3)
        self.item_x_drop_rate = s.rate("item_x_drop_rate", 0.3)
        self.edge_drop_rate = s.rate("edge_drop_rate", 0.2)
        self.z_drop_rate = s.rate("z_drop_rate", 0.2)
        self.l2_coef = s.real("l2_coef", 1e-5, 0.0)
        self.num_samples = s.integer("num_samples", 10, 0)
        self.num_negs = s.integer("num_negs", 1, 1)
        use_rp = s.flag("use_rp", True)
        use_item_emb = s.flag("use_item_emb", False)
        logger.info(s.summary())
        self._check_learning_rate(s)

        self.modal_features(config)  # checks shapes; no features at all is a DatasetError
        text = self.t_feat.float() if self.t_feat is not None else None
        image = self.v_feat.float() if self.v_feat is not None else None
        if image is not None and text is not None and use_rp:
            image = random_projection(image, text.shape[1])
        self.register_buffer("text_features", text)
        self.register_buffer("image_features", image)
        self.text_encoder = (feature_encoder(text.shape[1], hidden, d, feat_drop_rate)
                             if text is not None and self.k_t >= 0 else None)
        self.image_encoder = (feature_encoder(image.shape[1], hidden, d, feat_drop_rate)
                              if image is not None and self.k_v >= 0 else None)

        self.interaction_graph = self.training_graph(self_loops=True)
        self.user_embedding = nn.Parameter(torch.randn(self.n_users, d) / np.sqrt(d))
        self.item_embedding = (nn.Parameter(torch.randn(self.n_items, d) / np.sqrt(d))
                               if use_item_emb else None)
        self.global_query = nn.Linear(d, ATTENTION_UNITS)
        self.global_key = nn.Linear(d, ATTENTION_UNITS)
        for linear in (self.global_query, self.global_key):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.to(self.torch_device)

    def _check_learning_rate(self, s: Settings) -> None:
        wanted = _AUTHOR_LR.get(s.dataset.lower())
        given = (s.get("learning_rate"), (s.get("learning_rate_scheduler") or [None])[0])
        if wanted and tuple(given) != wanted:
            logger.warning("MIGGT: the authors train %s with learning_rate=%s decayed by %s per epoch "
                           "(learning_rate_scheduler: [%s, 1]); this run uses %s / %s.",
                           s.dataset, wanted[0], wanted[1], wanted[1], given[0], given[1])

    # ------------------------------------------------------------------------------------------

    def _diffuse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        graph = self.step_graph(self.edge_drop_rate)
        return markov_diffusion(graph, x, k, self.alpha, self.beta)

    def _item_branch(self, features: Optional[torch.Tensor], encoder: Optional[nn.Module], k: int):
        if features is None or encoder is None:
            return None
        encoded = encoder(F.dropout(features, self.input_feat_drop_rate, self.training))
        users = encoded.new_zeros(self.n_users, encoded.shape[1])
        return self._diffuse(torch.cat([users, F.dropout(encoded, self.item_x_drop_rate, self.training)]), k)

    def propagate_all(self) -> torch.Tensor:
        """MIRF: ``H`` of the module docstring after ``z`` dropout, users first: (N, d)."""
        parts = []
        if self.k_e >= 0:
            items = (self.user_embedding.new_zeros(self.n_items, self.embedding_size) if self.item_embedding is None
                     else F.dropout(self.item_embedding, self.item_x_drop_rate, self.training))
            users = F.dropout(self.user_embedding, self.user_x_drop_rate, self.training)
            parts.append(self._diffuse(torch.cat([users, items]), self.k_e))
        parts.append(self._item_branch(self.text_features, self.text_encoder, self.k_t))
        parts.append(self._item_branch(self.image_features, self.image_encoder, self.k_v))
        combined = sum(p for p in parts if p is not None)
        return F.dropout(combined, self.z_drop_rate, self.training)

    def global_transformer(self, h: torch.Tensor) -> torch.Tensor:
        """SGT: (N, d) -> every node's attended sequence ``out`` (N, C+1, d); row 0 is the node."""
        sampled = torch.randint(0, self.n_items, (h.shape[0], self.num_samples)).to(h.device)
        memory = torch.cat([h.unsqueeze(1), h[self.n_users:][sampled]], dim=1)
        scores = self.global_query(memory) @ self.global_key(memory).transpose(1, 2)
        attention = torch.softmax(scores / ATTENTION_UNITS ** 0.5, dim=-1)
        return ATTENTION_SHARE * (attention @ memory) + (1.0 - ATTENTION_SHARE) * memory

    def encode(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Z (N, d), the transformer's sequences (N, C+1, d))."""
        sequences = self.global_transformer(self.propagate_all())
        return sequences[:, 0], sequences

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        z, _ = self.encode()
        return z[:self.n_users], z[self.n_users:]

    def loss_terms(self, users: torch.Tensor, positives: torch.Tensor,
                   negatives: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed InfoBPR, L2 term, summed TUR) for pairs (b,) and negatives (b, m)."""
        z, sequences = self.encode()
        user_z, item_z = z[:self.n_users], z[self.n_users:]
        u = user_z[users]
        ranking = info_bpr_loss(u, item_z, positives, negatives).sum()
        l2 = self.l2_coef * 0.5 * (user_z.pow(2).sum() + item_z.pow(2).sum())
        logits = torch.bmm(sequences[positives + self.n_users], u.unsqueeze(-1)).squeeze(-1)
        unsmooth = F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long), reduction="sum")
        return ranking, l2, unsmooth

    def calculate_loss(self, interaction: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MMRec's training batch (3, b): users, positive items, negative items -> (InfoBPR, L2, TUR)."""
        negatives = with_uniform_negatives(interaction[2], self.num_negs, self.n_items)
        return self.loss_terms(interaction[0], interaction[1], negatives)
