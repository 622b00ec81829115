"""DiffMM (Jiang et al., ACM MM 2024, "DiffMM: Multi-Modal Diffusion Model for Recommendation") as
an MMRec ``GeneralRecommender``.

Each epoch (MMRec's ``pre_epoch_processing``, before the epoch's recommender batches, the order of
the authors' ``trainEpoch``):

1. diffusion training: for every batch of users, each modality's denoiser learns to recover the
   users' interaction rows from noised ones (eq. 10-12) conditioned on the modality (eq. 13);
   the denoisers have their own Adam optimizer, owned by this model, stepped here;
2. graph generation: the reverse process (eq. 7-9) denoises every user's row, the ``rebuild_k``
   highest items per user form a modality-aware user-item graph ``G_m`` (with self-loops,
   ``D^-1/2 (A + I) D^-1/2``), whose edges are then kept with probability ``keep_rate`` (and
   rescaled by ``1 / keep_rate``).

Recommender (eq. 14-19, authors' ``forward_MM`` / ``forward_cl_MM``), ``G`` the training graph::

    f_m   = normalize(transform_m(X_m))                                     (n_items, d)
    e_m   = G [U; f_m] + G [(G [U; f_m])_users; I] + ris_adj_lambda * G_m [U; I]
    e     = sum_m softmax(w)_m e_m ;  out = sum_{l=0..L} G^l e + ris_lambda * normalize(e)
    v_m   = sum_{l=0..L} G^l (G_m [U; f_m])                                (contrastive views)
    loss  = BPR (sum / train_batch_size) + reg_weight (||U||^2 + ||I||^2)
            + cl_weight * InfoNCE between views (cl_mode 'modal') or main vs views ('main')

The denoisers are not registered as sub-modules: MMRec's optimizer (built from ``parameters()``)
must not see them, and they are not part of ``state_dict``. docs/baselines.md lists every choice.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import layers as L
from .base import BaselineRecommender
from .gaussian_diffusion import Denoiser, GaussianDiffusion

__all__ = ["DiffMM", "PRESETS", "drop_edges", "contrast_nodes"]

logger = logging.getLogger(__name__)

#: The authors' README command lines per dataset (our key <- their flag): reg_weight <- --reg,
#: cl_weight <- --ssl_reg, cl_temperature <- --temp, keep_rate <- --keepRate, e_loss_weight <-
#: --e_loss, ris_lambda <- --ris_lambda, feature_transform <- --trans (0 matrix, 1 linear),
#: cl_mode <- --cl_method (0 modal, 1 main). Unlisted flags keep the Params.py defaults.
PRESETS = {
    "tiktok": dict(reg_weight=1e-4, cl_weight=1e-2, cl_temperature=0.5, keep_rate=0.5, e_loss_weight=0.1,
                   ris_lambda=0.5, feature_transform="linear", cl_mode="main"),
    "baby": dict(reg_weight=1e-5, cl_weight=1e-1, cl_temperature=0.5, keep_rate=1.0, e_loss_weight=0.01,
                 ris_lambda=0.5, feature_transform="matrix", cl_mode="modal"),
    "sports": dict(reg_weight=1e-6, cl_weight=1e-2, cl_temperature=0.1, keep_rate=1.0, e_loss_weight=0.5,
                   ris_lambda=0.1, feature_transform="linear", cl_mode="modal"),
}
OFFICIAL_NAMES = {"latdim": "embedding_size", "gnn_layer": "n_layers", "reg": "reg_weight", "ssl_reg": "cl_weight",
                  "temp": "cl_temperature", "keepRate": "keep_rate", "e_loss": "e_loss_weight",
                  "trans": "feature_transform", "cl_method": "cl_mode", "dims": "denoise_dims",
                  "d_emb_size": "step_embedding_size", "norm": "denoise_norm", "steps": "diffusion_steps",
                  "lr": "learning_rate", "batch": "train_batch_size"}
TRANSFORMS = ("matrix", "linear", "mixed")
CL_MODES = ("modal", "main")


def drop_edges(graph: sp.spmatrix, keep_rate: float, generator: Optional[torch.Generator] = None) -> sp.csr_matrix:
    """Keep each stored entry when ``u + keep_rate >= 1`` for ``u ~ U[0, 1)`` and divide kept
    values by ``keep_rate``. One draw of torch's generator per entry, entries in column-major
    order (column, then row): the order the authors' code draws in, so a seeded run drops the
    same edges."""
    if keep_rate >= 1.0:
        return sp.csr_matrix(graph)
    csc = sp.csc_matrix(graph)
    csc.sort_indices()
    keep = (torch.rand(csc.nnz, generator=generator) + keep_rate).floor().bool().numpy()
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    kept = sp.csr_matrix((csc.data[keep] / keep_rate, (csc.indices[keep], cols[keep])), shape=graph.shape)
    kept.sort_indices()
    return kept.astype(np.float32)


def contrast_nodes(a: torch.Tensor, b: torch.Tensor, nodes: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of the rows ``nodes`` of ``a`` against all rows of ``b`` (both (n, d), rows
    L2-normalised first): mean of ``-log(exp(a_i . b_i / tau) / sum_j exp(a_i . b_j / tau))``."""
    a, b = F.normalize(a), F.normalize(b)
    picked = a[nodes]
    positive = (picked * b[nodes]).sum(-1) / tau
    return (torch.logsumexp(picked @ b.t() / tau, dim=-1) - positive).mean()


class FeatureTransform(nn.Module):
    """``leaky_relu(X W, 0.2)`` with ``W`` (d_m, d) Xavier-uniform ('matrix', the authors' trans 0)
    or ``X W^T + b`` ('linear', trans 1)."""

    def __init__(self, d_in: int, d: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "matrix":
            self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_in, d)))
        else:
            self.linear = nn.Linear(d_in, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "matrix":
            return F.leaky_relu(x @ self.weight, 0.2)
        return self.linear(x)


class DiffMM(BaselineRecommender):
    """DiffMM for MMRec: ``DiffMM(config, dataloader)``; settings in configs/model/DiffMM.yaml."""

    GENERATION_CHUNK = 256  # users per reverse-process chunk (memory only)

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        s = self.read_settings(config, n_layers=1, official_names=OFFICIAL_NAMES, presets=PRESETS, fallback="baby")
        any_real = float("-inf")
        d = self.embedding_size
        self.reg_weight = s.real("reg_weight", None, 0.0)
        self.cl_weight = s.real("cl_weight", None, 0.0)
        self.cl_temperature = s.real("cl_temperature", None, 0.0, low_open=True)
        self.keep_rate = s.real("keep_rate", None, 0.0, 1.0, low_open=True)
        self.e_loss_weight = s.real("e_loss_weight", None, 0.0)
        self.ris_lambda = s.real("ris_lambda", None, any_real)
        self.ris_adj_lambda = s.real("ris_adj_lambda", 0.2, any_real)
        transform = s.choice("feature_transform", None, TRANSFORMS)
        self.cl_mode = s.choice("cl_mode", None, CL_MODES)
        self.rebuild_k = s.integer("rebuild_k", 1, 1)
        self.sampling_steps = s.integer("sampling_steps", 0, 0)
        self.sampling_noise = s.flag("sampling_noise", False)
        self.batch_size = s.integer("train_batch_size", 2048, 1)
        self.diffusion_batch_size = s.integer("diffusion_batch_size", self.batch_size, 1)
        self.diffusion_lr = s.real("diffusion_learning_rate", s.real("learning_rate", 1e-3, 0.0), 0.0)
        steps = s.integer("diffusion_steps", 5, 1)
        if not 0 <= self.sampling_steps <= steps:
            raise ConfigError(f"DiffMM config key 'sampling_steps' = {self.sampling_steps} must lie in "
                              f"[0, diffusion_steps={steps}].")
        if self.rebuild_k >= self.n_items:
            raise ConfigError(f"DiffMM config key 'rebuild_k' = {self.rebuild_k} but there are only "
                              f"{self.n_items} items; choose rebuild_k <= {self.n_items - 1}.")
        device = self.torch_device

        self.interaction_graph = self.training_graph(self_loops=True)  # D^-1/2 (A + I) D^-1/2
        names, feats = self.modal_features(config)
        self.modality_names = tuple(names)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        for m, f in enumerate(feats):
            self.register_buffer(f"feature{m}", f.detach().clone(), persistent=False)  # data, not learned
        kinds = [transform if transform != "mixed" else ("matrix" if m == 0 else "linear") for m in range(len(feats))]
        self.transforms = nn.ModuleList(FeatureTransform(f.shape[1], d, k) for f, k in zip(feats, kinds))
        self.modal_weight = nn.Parameter(torch.full((len(feats),), 1.0 / len(feats)))
        self.diffusion = GaussianDiffusion(s.real("noise_scale", 0.1, 0.0, low_open=True),
                                           s.real("noise_min", 1e-4, 0.0),
                                           s.real("noise_max", 0.02, 0.0), steps, device)
        dims = s.int_list("denoise_dims", [1000])
        step_size = s.integer("step_embedding_size", 10, 1)
        norm, dropout = s.flag("denoise_norm", False), s.real("denoise_dropout", 0.5, 0.0, 1.0)
        # held outside the module tree on purpose (see the module docstring); _apply moves them along
        object.__setattr__(self, "denoisers", nn.ModuleList(
            Denoiser(self.n_items, dims, step_size, norm, dropout) for _ in feats))
        self.to(device)
        self._diffusion_optimizer: Optional[torch.optim.Optimizer] = None
        self.modal_graphs: Optional[List[L.SparseGraph]] = None
        self._epoch_note = ""
        logger.info("%s\nDiffMM modalities %s, feature transforms %s", s.summary(), names, kinds)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if "denoisers" in self.__dict__:
            self.denoisers._apply(fn, *args, **kwargs)
        for graph in self.__dict__.get("modal_graphs") or ():  # a plain list: the generated graphs move too
            graph._apply(fn, *args, **kwargs)
        return self

    @property
    def features(self) -> List[torch.Tensor]:
        return [getattr(self, f"feature{m}") for m in range(len(self.transforms))]

    # ------------------------------------------------------------------------------------------
    # diffusion (eq. 4-13) and graph generation

    def _user_rows(self, users: np.ndarray) -> torch.Tensor:
        """Dense training rows (b, n_items) of ``users``: the diffusion's x_0."""
        rows = self.interactions[users].toarray()
        return torch.from_numpy(rows).to(self.item_embedding.device, self.item_embedding.dtype)

    def modal_item_features(self) -> List[torch.Tensor]:
        """``transform_m(X_m)`` (n_items, d) per modality (not normalised)."""
        return [t(f) for t, f in zip(self.transforms, self.features)]

    def train_diffusion(self) -> List[float]:
        """One pass of denoiser training over all users in shuffled batches -> mean loss per
        modality (``ELBO + e_loss_weight * condition``)."""
        order = torch.randperm(self.n_users).numpy()
        totals = np.zeros(len(self.denoisers))
        batches = 0
        condition = self._diffusion_condition()  # only the denoisers step in this pass
        for start in range(0, self.n_users, self.diffusion_batch_size):
            rows = self._user_rows(order[start:start + self.diffusion_batch_size])
            totals += self.diffusion_step(rows, condition)
            batches += 1
        return list(totals / max(batches, 1))

    @torch.no_grad()
    def _diffusion_condition(self) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The detached item embeddings (n_items, d) and modal features the denoisers condition on."""
        return self.item_embedding.detach(), [f.detach() for f in self.modal_item_features()]

    def diffusion_step(self, x0: torch.Tensor,
                       condition: Optional[Tuple[torch.Tensor, List[torch.Tensor]]] = None) -> np.ndarray:
        """One optimizer step of every denoiser on users' rows ``x0`` (b, n_items), conditioned on
        the current (detached) item embeddings and modal features (``condition``: computed here when
        not given) -> loss per modality."""
        if self._diffusion_optimizer is None:
            self._diffusion_optimizer = torch.optim.Adam(self.denoisers.parameters(), lr=self.diffusion_lr,
                                                         weight_decay=0)
        items, feats = condition if condition is not None else self._diffusion_condition()
        self._diffusion_optimizer.zero_grad()
        terms = []
        for m, denoiser in enumerate(self.denoisers):
            elbo, condition = self.diffusion.training_losses(denoiser, x0, items, feats[m])
            terms.append(elbo.mean() + self.e_loss_weight * condition.mean())
        sum(terms).backward()
        self._diffusion_optimizer.step()
        return np.array([float(t.detach()) for t in terms])

    @torch.no_grad()
    def generate_graphs(self) -> List[L.SparseGraph]:
        """Eq. 7-9 and the graph rebuild: every user's denoised row, its ``rebuild_k`` best items
        per modality -> ``drop_edges(D^-1/2 (A_m + I) D^-1/2)`` as sparse graphs."""
        picks: List[List[np.ndarray]] = [[] for _ in self.denoisers]
        # each user's row is denoised on its own, so any chunking gives the same graphs; chunks of
        # GENERATION_CHUNK users keep the (chunk, n_items) activations small enough to be reused
        for start in range(0, self.n_users, self.GENERATION_CHUNK):
            x0 = self._user_rows(np.arange(start, min(self.n_users, start + self.GENERATION_CHUNK)))
            for m, denoiser in enumerate(self.denoisers):
                denoised = self.diffusion.p_sample(denoiser, x0, self.sampling_steps, self.sampling_noise)
                picks[m].append(torch.topk(denoised, self.rebuild_k, dim=-1).indices.cpu().numpy())
        graphs = []
        device = self.item_embedding.device
        for chosen in picks:
            items = np.concatenate(chosen)
            users = np.repeat(np.arange(self.n_users), self.rebuild_k)
            generated = sp.csr_matrix((np.ones(users.size, np.float32), (users, items.ravel())),
                                      shape=(self.n_users, self.n_items))
            graph = L.normalized_interaction_graph(generated, self_loops=True)
            graphs.append(L.SparseGraph(drop_edges(graph, self.keep_rate), device, self.item_embedding.dtype))
        self.modal_graphs = graphs
        return graphs

    # ------------------------------------------------------------------------------------------
    # recommender (eq. 14-19)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_{l=0..L} G^l x`` on the training graph (the authors sum, not average)."""
        total, layer = x, x
        for _ in range(self.n_layers):
            layer = L.propagate(self.interaction_graph, layer)
            total = total + layer
        return total

    def _graphs(self) -> List[L.SparseGraph]:
        return self.modal_graphs if self.modal_graphs is not None else self.generate_graphs()

    def normalized_modal_features(self) -> List[torch.Tensor]:
        """``normalize(transform_m(X_m))`` (n_items, d) per modality, the input of eq. 14 and 18."""
        return [F.normalize(f) for f in self.modal_item_features()]

    def forward(self, normalized: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. 14-17: final user (n_users, d) and item (n_items, d) representations (``normalized``:
        :meth:`normalized_modal_features`, computed here when not given)."""
        graphs = self._graphs()
        ids = torch.cat([self.user_embedding, self.item_embedding])
        weights = torch.softmax(self.modal_weight, dim=0)
        fused = 0
        for m, feat in enumerate(normalized if normalized is not None else self.normalized_modal_features()):
            spread = L.propagate(self.interaction_graph, torch.cat([self.user_embedding, feat]))
            second = L.propagate(self.interaction_graph, torch.cat([spread[:self.n_users], self.item_embedding]))
            fused = fused + weights[m] * (spread + second + self.ris_adj_lambda * L.propagate(graphs[m], ids))
        out = self._layers(fused) + self.ris_lambda * F.normalize(fused)
        return out[:self.n_users], out[self.n_users:]

    def modal_views(self, normalized: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Eq. 18: per modality ``sum_l G^l (G_m [U; normalize(f_m)])`` (n_users + n_items, d)."""
        graphs = self._graphs()
        normalized = normalized if normalized is not None else self.normalized_modal_features()
        return [self._layers(L.propagate(g, torch.cat([self.user_embedding, f]))) for g, f in zip(graphs, normalized)]

    # ------------------------------------------------------------------------------------------
    # MMRec interface

    def pre_epoch_processing(self):
        """The authors' epoch prologue: train the denoisers, then regenerate the modal graphs."""
        t0 = time.perf_counter()
        losses = self.train_diffusion()
        t1 = time.perf_counter()
        self.generate_graphs()
        self._eval_cache = None  # new generated graphs: the parameters alone do not key the scores
        self._epoch_note = (f"DiffMM diffusion: loss per modality {', '.join(f'{v:.4f}' for v in losses)}; "
                            f"denoiser training {t1 - t0:.1f}s, graph generation {time.perf_counter() - t1:.1f}s")
        logger.debug(self._epoch_note)

    def post_epoch_processing(self):
        return self._epoch_note or None

    def calculate_loss(self, interaction):
        """-> (BPR, reg, cl) for one batch (3, b) of users, positive and negative items."""
        self._eval_cache = None
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        normalized = self.normalized_modal_features()  # one transform per batch, shared by eq. 14 and 18
        user_rep, item_rep = self.forward(normalized)
        u = user_rep[users]
        bpr = -F.logsigmoid((u * item_rep[pos]).sum(-1) - (u * item_rep[neg]).sum(-1)).sum() / self.batch_size
        reg = self.reg_weight * (self.user_embedding.pow(2).sum() + self.item_embedding.pow(2).sum())
        cl = bpr.new_zeros(())
        if self.cl_weight > 0:
            views = [(v[:self.n_users], v[self.n_users:]) for v in self.modal_views(normalized)]
            if self.cl_mode == "modal":
                pairs = list(itertools.combinations(views, 2))
            else:
                pairs = [((user_rep, item_rep), view) for view in views]
            for (ua, ia), (ub, ib) in pairs:
                cl = cl + contrast_nodes(ua, ub, users, self.cl_temperature) + \
                    contrast_nodes(ia, ib, pos, self.cl_temperature)
            cl = self.cl_weight * cl
        return bpr, reg, cl
