"""MICRO (Zhang et al., TKDE 2022, "Latent structure mining with contrastive modality fusion for
multimedia recommendation") as an MMRec ``GeneralRecommender``.

One pass, ``M`` modalities, ``d`` = embedding_size::

    raw features X_m (n_items, d_m) -> linear -> Z_m (n_items, d)
    eq. 2-4   learned graph  L_m = norm(kNN_k(cos(Z_m)))      sparse (n_items, n_items)
    eq. 5     A_m = (1 - lambda) L_m + lambda O_m,  O_m = norm(kNN_k(cos(X_m))) (fixed, cached)
    eq. 6     e_m = A_m^layers E_item                         (n_items, d)
    eq. 7-8   h = sum_m softmax_m(q^T tanh(W e_m + b)) e_m    (n_items, d)
    eq. 9-10  LightGCN on D^-1 (A + I) (authors' code), mean over layers 0..L
              users u = U_L, items i = I_L + normalize(h)
    losses:   BPR mean + reg_weight * 1/2 ||u, i+, i-||^2 / train_batch_size,
              cl_weight * sum_m InfoNCE(e_m -> h) over all items (eq. 11-12, tau)

As in the authors' code, the learned graph is rebuilt from the current projections at the first
training batch of every epoch (gradients then flow into the projections and the raw features
through the kept similarities) and reused, detached, by the epoch's other batches; evaluation
rebuilds it from the current weights. docs/baselines.md lists every choice and deviation.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..graphs import cosine_knn
from ..host import config_value, dataset_folder
from ..model import layers as L
from ..model.losses import bpr_loss
from .base import BaselineRecommender
from .item_knn import NORMALISATIONS, load_or_build_item_knn

__all__ = ["MICRO", "contrast_all_items"]

logger = logging.getLogger(__name__)

#: authors' flag -> our key (a value under the authors' name is refused with this hint); their
#: --topk (our knn_k) is not listed: MMRec's own topk (evaluation cut-offs) has that name
OFFICIAL_NAMES = {"embed_size": "embedding_size", "layers": "n_layers",
                  "loss_ratio": "cl_weight", "regs": "reg_weight", "lr": "learning_rate",
                  "norm_type": "knn_norm"}
CF_MODELS = ("lightgcn", "mf")


def contrast_all_items(z1: torch.Tensor, z2: torch.Tensor, tau: float, block: int = 512) -> torch.Tensor:
    """MICRO eq. 11-12: mean over rows i of ``-log(e(z1_i, z2_i) / (sum_j e(z1_i, z1_j) +
    sum_j e(z1_i, z2_j) - e(z1_i, z1_i)))`` with ``e(a, b) = exp(cos(a, b) / tau)``, over ALL rows
    of ``z1``, ``z2`` (n, d); ``block`` rows at a time, so memory is (block, n), never (n, n). The
    block size does not change the value; blocks of a few MB are reused by the allocator, while
    the authors' 4096-row blocks (110 MB on TikTok) are fresh zeroed pages on every batch (half of
    the CPU time went to the kernel)."""
    a, b = F.normalize(z1), F.normalize(z2)
    losses = []
    for start in range(0, a.shape[0], block):
        rows = slice(start, min(start + block, a.shape[0]))
        within = torch.exp(a[rows] @ a.t() / tau)
        between = torch.exp(a[rows] @ b.t() / tau)
        index = torch.arange(rows.start, rows.stop, device=a.device)
        local = torch.arange(rows.stop - rows.start, device=a.device)
        positive = between[local, index]
        denominator = within.sum(1) + between.sum(1) - within[local, index]
        losses.append(-torch.log(positive / denominator))
    return torch.cat(losses).mean()


class MICRO(BaselineRecommender):
    """MICRO for MMRec: ``MICRO(config, dataloader)``; settings in configs/model/MICRO.yaml."""

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        s = self.read_settings(config, official_names=OFFICIAL_NAMES)
        d = self.embedding_size
        self.ui_layers = len(s.int_list("weight_size", [64, 64], allow_empty=True))
        self.item_layers = s.integer("n_layers", 1, 0)
        self.knn_k = s.integer("knn_k", 10, 1)
        self.knn_norm = s.choice("knn_norm", "sym", NORMALISATIONS)
        self.lambda_coeff = s.real("lambda_coeff", 0.9, 0.0, 1.0)
        self.cl_weight = s.real("cl_weight", 0.03, 0.0)
        self.cl_temperature = s.real("cl_temperature", 0.5, 0.0, low_open=True)
        self.cl_block = s.integer("cl_block_size", 512, 1)
        self.reg_weight = s.real("reg_weight", 1e-5, 0.0)
        self.reg_batch_size = s.integer("train_batch_size", 2048, 1)
        self.cf_model = s.choice("cf_model", "lightgcn", CF_MODELS)
        train_features = s.flag("train_features", True)
        cache_dir = s.optional_path("micro_cache_dir")
        device = self.torch_device

        names, feats = self.modal_features(config)
        if self.knn_k >= self.n_items:
            raise ConfigError(f"MICRO config key 'knn_k' = {self.knn_k} but there are only {self.n_items} "
                              f"items; choose knn_k <= {self.n_items - 1}.")
        self.modality_names = tuple(names)
        t0 = time.perf_counter()
        inter_file = os.path.join(dataset_folder(config), str(config_value(config, "inter_file_name", "")))
        if cache_dir is not False:  # a folder, or beside the file MMRec read (see cache_dir_for)
            from ..cache import cache_dir_for

            cache_dir = cache_dir_for(inter_file, cache_dir or None)
        original, hit = load_or_build_item_knn(
            {n: f.detach().cpu().numpy() for n, f in zip(names, feats)}, self.knn_k, self.knn_norm,
            cache_dir, inter_file, progress=lambda m: logger.debug("MICRO graphs: %s", m))
        logger.info("MICRO item kNN graphs (%s) %s in %.2f s", ", ".join(names),
                    "read from the cache" if hit else "built", time.perf_counter() - t0)
        self.original_graphs = [original[n] for n in names]  # scipy CSR, fixed
        self.interaction_graph = self.training_graph(self_loops=True, norm="rw")  # D^-1 (A + I), authors'

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.raw_features = nn.ParameterList(
            nn.Parameter(f.detach().clone(), requires_grad=train_features) for f in feats)
        self.feature_proj = nn.ModuleList(nn.Linear(f.shape[1], d) for f in feats)
        self.fusion_query = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.to(device)

        self._rebuild = True          # set by pre_epoch_processing: the next batch rebuilds L_m
        self._mixed: Optional[List[L.SparseGraph]] = None  # detached A_m of the current epoch
        logger.info(s.summary())

    # ------------------------------------------------------------------------------------------
    # item graphs (eq. 2-6)

    def _neighbours(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3: the ``knn_k`` most cosine-similar items of every item (itself included) under
        projected features ``z`` (n_items, d) -> edge rows, cols (n_items * k,), without gradient.
        Exact float32 search by :func:`mmrec_rearm.graphs.cosine_knn`, never an n x n matrix."""
        knn = cosine_knn(z.detach().float().cpu().numpy(), self.knn_k, knn_self=True, label="micro_learned").tocoo()
        return (torch.from_numpy(knn.row.astype(np.int64)).to(z.device),
                torch.from_numpy(knn.col.astype(np.int64)).to(z.device))

    def _learned_edges(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 2-4 on projected features ``z`` (n_items, d): the kNN edges (rows, cols) chosen
        without gradient, and their normalised weights computed from ``z`` (differentiable)."""
        rows, cols = self._neighbours(z)
        unit = z / z.norm(dim=-1, keepdim=True)
        values = (unit[rows] * unit[cols]).sum(-1)
        if self.knn_norm == "none":
            return rows, cols, values
        degree = torch.zeros(z.shape[0], dtype=values.dtype, device=z.device).index_add(0, rows, values)
        scale = degree.pow(-0.5 if self.knn_norm == "sym" else -1.0)
        scale = torch.where(torch.isinf(scale), torch.zeros_like(scale), scale)
        weights = scale[rows] * values * (scale[cols] if self.knn_norm == "sym" else 1.0)
        return rows, cols, weights

    def _item_views(self, rebuild: bool, with_grad: bool) -> List[torch.Tensor]:
        """Eq. 5-6: the modality views ``e_m`` (n_items, d). ``rebuild``: recompute the learned
        graphs from the current projections (``with_grad``: differentiably, the first training
        batch of an epoch); otherwise reuse the epoch's detached mixed graphs."""
        lam = self.lambda_coeff
        views = []
        if rebuild or self._mixed is None:
            mixed = []
            for m, (raw, proj) in enumerate(zip(self.raw_features, self.feature_proj)):
                with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
                    rows, cols, weights = self._learned_edges(proj(raw))
                learned = sp.csr_matrix((weights.detach().double().cpu().numpy(),
                                         (rows.cpu().numpy(), cols.cpu().numpy())), shape=(self.n_items,) * 2)
                mixed.append(L.SparseGraph((1 - lam) * learned + lam * self.original_graphs[m].astype(np.float64),
                                           self.item_embedding.weight.device, self.item_embedding.weight.dtype))
                if with_grad and weights.requires_grad:
                    original = L.SparseGraph(self.original_graphs[m], weights.device, weights.dtype)
                    x = self.item_embedding.weight
                    for _ in range(self.item_layers):
                        spread = torch.zeros_like(x).index_add(0, rows, weights.unsqueeze(1) * x[cols])
                        x = (1 - lam) * spread + lam * L.propagate(original, x)
                    views.append(x)
            self._mixed = mixed
            if views:
                return views
        for graph in self._mixed:
            views.append(L.homogeneous_propagation(graph, self.item_embedding.weight, self.item_layers))
        return views

    # ------------------------------------------------------------------------------------------
    # representations

    def _forward(self, rebuild: bool, with_grad: bool):
        """-> users (n_users, d), items (n_items, d), modality views [e_m], fused h (eq. 5-10)."""
        views = self._item_views(rebuild, with_grad)
        scores = torch.cat([self.fusion_query(v) for v in views], dim=-1)  # (n_items, M)
        weights = torch.softmax(scores, dim=-1)
        fused = sum(weights[:, m:m + 1] * v for m, v in enumerate(views))
        if self.cf_model == "lightgcn":
            ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
            out = L.lightgcn(self.interaction_graph, ego, self.ui_layers)
            users, items = out[:self.n_users], out[self.n_users:]
        else:
            users, items = self.user_embedding.weight, self.item_embedding.weight
        return users, items + F.normalize(fused, p=2, dim=1), views, fused

    def forward(self):
        """Final representations of all users (n_users, d) and items (n_items, d), learned graphs
        rebuilt from the current weights."""
        users, items, _, _ = self._forward(rebuild=True, with_grad=False)
        return users, items

    # ------------------------------------------------------------------------------------------
    # MMRec interface

    def pre_epoch_processing(self):
        self._rebuild = True

    def calculate_loss(self, interaction):
        """-> (BPR, reg_weight * embedding L2 / batch, cl_weight * sum_m InfoNCE) for one batch of
        (users, positive items, negative items) (3, b)."""
        self._eval_cache = None
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        rebuild, self._rebuild = self._rebuild, False
        user_rep, item_rep, views, fused = self._forward(rebuild, with_grad=rebuild)
        u, p, n = user_rep[users], item_rep[pos], item_rep[neg]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = self.reg_weight * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / self.reg_batch_size
        cl = bpr.new_zeros(())
        if self.cl_weight > 0:
            cl = self.cl_weight * sum(contrast_all_items(v, fused, self.cl_temperature, self.cl_block) for v in views)
        return bpr, reg, cl
