"""REARM as an MMRec ``GeneralRecommender``: the network of the paper's Sec. 4 and its MMRec interface.

Data flow of one pass (``N = n_users + n_items``, ``d`` = embedding_size, ``M`` modalities)::

    raw item features (n_items, d_m), users' raw preferences (n_users, d_m)
      -> eq. 3  projection per modality and side                      -> (n, d) each
      -> eq. 4  [id || m_1 .. m_M] propagated on the fused homogeneous
                graph (last layer), rows L2-normalised                -> (n, (1+M) d)
      -> eq. 5-9 items: self-attention, then cross-attention, each with
                residual + LayerNorm (+ PReLU); users: PReLU only      -> (n, d) per modality
      -> eq. 10-11 LightGCN on the interaction graph, features and IDs
                separately, mean over layers 0..L                      -> F (N, M d), I (N, d)
      -> eq. 13-16 meta-network on F, applied to I: share^f           -> (r, d)
      -> eq. 18 uni^f_m = PReLU(F_m) + I                               -> (r, d) per modality
      -> eq. 19 representation [uni^f_1 .. uni^f_M || share^f]        -> (r, (M+1) d)
    losses: eq. 21 BPR, eq. 12 InfoNCE, eq. 17 orthogonality, eq. 22 total.

Every place where the defaults follow the official code rather than the paper's text, and every
switch, is listed in docs/choices.md ("Model").
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import scipy.sparse as sp
import torch
import torch.nn as nn
from torch.nn.functional import normalize

from ..graphs.inputs import binary_matrix
from ..errors import ConfigError, DatasetError
from ..host import BaseRecommender, CachedScoring, config_value, dataset_folder
from ..features import load_feature_file
from ..modalities import check_feature_files, selected_modalities
from . import decay
from .allocator import return_free_heap_to_os, tune_host_allocator
from .layers import (MatrixAttention, MetaNetwork, ScalarAttention, SparseGraph, homogeneous_propagation,
                     lightgcn, normalized_interaction_graph)
from .losses import bpr_loss, info_nce, l2_penalty, orthogonal_loss, pairwise_sum
from .raw_table import RawTable, users_mean_features
from .presets import RearmSettings, describe, read_settings

__all__ = ["REARM", "RawTable", "build_homogeneous_graphs"]

logger = logging.getLogger(__name__)


def build_homogeneous_graphs(data, graph_settings: Dict[str, Any], cache_dir: Any):
    """The fused homogeneous graphs of ``data`` via the foundation cache -> (graphs, hit).

    ``cache_dir``: the cache folder, or False to bypass the cache."""
    from ..cache import load_or_build
    from ..graphs import GraphParams

    params = GraphParams.from_mapping(graph_settings)
    return load_or_build(data, params, cache_dir=cache_dir,
                         progress=lambda msg: logger.debug("REARM graphs: %s", msg))


class REARM(CachedScoring, BaseRecommender):
    """REARM for MMRec: ``REARM(config, dataloader)``; MMRec's trainer calls ``calculate_loss`` per
    training batch (a (3, b) LongTensor: users, positive items, negative items) and
    ``full_sort_predict`` per evaluation batch.

    Settings: configs/model/REARM.yaml (validated by :func:`~mmrec_rearm.model.presets.read_settings`).
    """

    #: Names of the terms :meth:`calculate_loss` returns (eq. 21, 12, 17, 22), for progress lines.
    loss_names = ("bpr", "cl", "ort", "reg")

    def __init__(self, config: Any, dataloader: Any):
        config_key = functools.partial(config_value, config)  # (key, default=None) -> value
        settings: RearmSettings = read_settings(config, config_key)
        # before the host's constructor, which loads the feature files itself (MMRec: with pickle
        # allowed, and a bare assertion when none exists)
        check_feature_files(config_key, dataset_folder(config), settings.modalities,
                            settings.extra_feature_files, dataset=str(config_key("dataset", "")))
        super().__init__(config, dataloader)
        self.settings = settings
        logger.info(describe(settings.preset, settings.dataset))
        logger.info(settings.summary())
        self._check_weight_decay(settings)

        device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        if tune_host_allocator(device, settings.malloc_mmap_threshold_mb):
            logger.info("REARM: allocations >= %s MB use mmap (malloc_mmap_threshold_mb)", settings.malloc_mmap_threshold_mb)
        host_inter = dataloader.inter_matrix(form="coo")
        if host_inter.shape != (self.n_users, self.n_items):
            raise DatasetError(f"interaction matrix has shape {host_inter.shape}, expected "
                               f"(n_users={self.n_users}, n_items={self.n_items})")
        inter = binary_matrix(host_inter)
        names, feats = self._modal_features(config, settings)
        logger.info("REARM modalities: %s", ", ".join(f"{n} ({f.shape[1]}-d)" for n, f in zip(names, feats)))
        self.modality_names: Tuple[str, ...] = tuple(names)
        n_mod = len(feats)
        d = settings.embedding_size
        self.embedding_size, self.n_modalities = d, n_mod

        # ---- graphs (built once, or read from the cache) -----------------------------------
        t0 = time.perf_counter()
        graphs, hit = self._graphs(config, settings, inter, names, feats)
        logger.info("REARM graphs %s in %.2f s", "read from the cache" if hit else "built", time.perf_counter() - t0)
        self.user_graph = SparseGraph(graphs.user_homogeneous, device) if settings.use_user_graph else None
        self.item_graph = SparseGraph(graphs.item_homogeneous, device) if settings.use_item_graph else None
        self.interaction_graph = SparseGraph(normalized_interaction_graph(inter), device)

        # ---- parameters ---------------------------------------------------------------------
        self.user_id = nn.Embedding(self.n_users, d)
        self.item_id = nn.Embedding(self.n_items, d)
        item_values = [f.to(device) for f in feats]
        self.item_raw = nn.ModuleList(RawTable(v, settings.train_raw_features) for v in item_values)
        self.user_raw = nn.ModuleList(RawTable(users_mean_features(inter, v), settings.train_raw_features)
                                      for v in item_values)
        self.item_proj = nn.ModuleList(nn.Linear(v.shape[1], d) for v in item_values)
        self.user_proj = nn.ModuleList(nn.Linear(v.shape[1], d) for v in item_values)
        attention = ((lambda p: ScalarAttention(p)) if settings.attention == "scalar"
                     else (lambda p: MatrixAttention(d, p)))
        self.self_attn = nn.ModuleList(attention(settings.self_attn_dropout) for _ in range(n_mod))
        self.cross_attn = nn.ModuleList(attention(settings.cross_attn_dropout) for _ in range(n_mod if n_mod > 1 else 0))
        # One LayerNorm and one PReLU shared by every place that uses them (official code).
        self.norm = nn.LayerNorm(d)
        self.act = nn.PReLU()
        if settings.use_meta:
            self.user_meta = MetaNetwork(n_mod, d, settings.rank, settings.meta_input_grad)
            self.item_meta = MetaNetwork(n_mod, d, settings.rank, settings.meta_input_grad)
        else:
            self.user_meta = self.item_meta = None
        self._reset_parameters()
        self.to(device)

        self.representation_passes = 0  # full passes over the graph (tests, profiling)
        self._attach_decay()
        if device.type == "cpu":  # graph building's freed heap; a GPU model's steps do not reuse it
            return_free_heap_to_os()

    # ------------------------------------------------------------------------------------------
    # construction helpers

    def _check_weight_decay(self, settings: RearmSettings) -> None:
        if settings.weight_decay_mode in ("decoupled", "l2") and settings.host_weight_decay > 0:
            raise ConfigError(
                f"weight_decay_mode '{settings.weight_decay_mode}' regularises inside the model with "
                f"reg_weight={settings.reg_weight}, but MMRec's optimizer also has weight_decay="
                f"{settings.host_weight_decay}; set weight_decay: 0.0 (or weight_decay_mode: coupled to use "
                "MMRec's Adam weight decay instead).")
        if settings.weight_decay_mode == "coupled" and settings.host_weight_decay == 0:
            logger.warning("REARM: weight_decay_mode is 'coupled' but MMRec's weight_decay is 0, so "
                           "the model is not regularised; set weight_decay (e.g. to reg_weight=%s).",
                           settings.reg_weight)

    def _modal_features(self, config: Any, settings: RearmSettings) -> Tuple[List[str], List[torch.Tensor]]:
        """The modalities :mod:`mmrec_rearm.modalities` selects -> names and (n_items, d_m) float
        tensors: the host's ``v_feat`` / ``t_feat`` for slots 0 / 1, extra files loaded here."""
        names, feats = [], []
        for modality in selected_modalities(functools.partial(config_value, config), dataset_folder(config),
                                            settings.modalities, settings.extra_feature_files):
            slot = modality.slot
            if slot.index < 2:
                tensor = (self.v_feat, self.t_feat)[slot.index]
                if tensor is None:
                    raise DatasetError(f"no item features in {dataset_folder(config)}: the host loaded nothing for "
                                       f"{slot.key}={slot.name!r} (end2end on, or is_multimodal_model off?).")
            else:
                tensor = torch.from_numpy(load_feature_file(slot.label, modality.path, self.n_items))
            if tensor.dim() != 2 or tensor.shape[0] != self.n_items:
                raise DatasetError(f"{modality.path}: feature '{modality.name}' ({slot.key}) has shape "
                                   f"{tuple(tensor.shape)}, expected (n_items={self.n_items}, d).")
            names.append(modality.name)
            feats.append(tensor.float())
        return names, feats

    def _graphs(self, config: Any, settings: RearmSettings, inter: sp.csr_matrix, names: Sequence[str],
                feats: Sequence[torch.Tensor]):
        from ..cache import cache_dir_for, data_fingerprint
        from ..data import TrainingData

        coo = inter.tocoo()
        inter_file = os.path.join(dataset_folder(config),
                                  str(config_value(config, "inter_file_name", f"{settings.dataset}.inter")))
        data = TrainingData.from_arrays(
            coo.row, coo.col, self.n_users, self.n_items,
            {name: f.detach().cpu().numpy() for name, f in zip(names, feats)},
            source={"inter": inter_file})  # a record of where MMRec read them; it does not steer the cache

        #: what this model was built on (checkpoints store it; recommend checks a dataset against it)
        self.data_fingerprint = data_fingerprint(data)
        # the cache folder is chosen here, beside the file MMRec read (or as configured)
        cache_dir = False if settings.cache_dir is False else cache_dir_for(inter_file, settings.cache_dir)
        return build_homogeneous_graphs(data, settings.graph, cache_dir)

    def _reset_parameters(self) -> None:
        # Official initialisation: N(0, 0.1) ID embeddings, Xavier-normal projection weights;
        # everything else keeps torch's defaults.
        nn.init.normal_(self.user_id.weight, std=0.1)
        nn.init.normal_(self.item_id.weight, std=0.1)
        for proj in list(self.item_proj) + list(self.user_proj):
            nn.init.xavier_normal_(proj.weight)

    def _attach_decay(self) -> None:
        """AdamW's decoupled weight decay (weight_decay_mode 'decoupled'): before each step of the
        host's optimizer, each parameter with a gradient is multiplied by ``1 - lr * reg_weight``
        with the lr of that optimizer's param group at that moment (see :mod:`.decay`)."""
        settings = self.settings
        if settings.weight_decay_mode == "decoupled" and settings.reg_weight > 0:
            decay.attach(self, settings.reg_weight)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._attach_decay()  # deep copies and unpickled models decay like the original

    # ------------------------------------------------------------------------------------------
    # the network

    def _side(self, ids: torch.Tensor, raw: nn.ModuleList, proj: nn.ModuleList,
              graph: Optional[SparseGraph], n_layers: int) -> List[torch.Tensor]:
        """Eq. (3)-(4) for one side: project each modality, concatenate with the IDs, propagate on
        the homogeneous graph (last layer) and L2-normalise the rows (official). -> [id, m_1..m_M]
        each (n, d)."""
        modal = [r.project(p) for r, p in zip(raw, proj)]  # eq. 3
        h = torch.cat([ids] + modal, dim=-1)
        if graph is not None:
            h = homogeneous_propagation(graph, h, n_layers)  # eq. 4
        h = normalize(h, p=2, dim=1)
        return list(h.split(self.embedding_size, dim=-1))

    def _refine_items(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        """Eq. (5)-(9): self-attention then cross-attention on each item modality, each followed by
        residual + the shared LayerNorm + the shared PReLU (official). With more than two
        modalities the cross-attention query is the mean of the other modalities; with one there
        is no cross-attention. (n_items, d) each."""
        refined = [self.act(self.norm(f + attn(f, f))) for f, attn in zip(feats, self.self_attn)]  # eq. 5-6
        if len(refined) == 1:
            return refined
        out = []
        for m, attn in enumerate(self.cross_attn):  # eq. 7-9
            others = [r for j, r in enumerate(refined) if j != m]
            query = others[0] if len(others) == 1 else torch.stack(others).mean(dim=0)
            out.append(self.act(self.norm(refined[m] + attn(query, refined[m]))))
        return out

    def _propagate_all(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. (3)-(11) for all nodes -> modal features F (N, M d) and IDs I (N, d) after LightGCN.

        Rows 0..n_users-1 are users, the rest items. Features and IDs are propagated separately
        (the paper's G^m_ui and G^id_ui) but in one sparse product, since LightGCN acts on each
        column independently.
        """
        self.representation_passes += 1
        settings = self.settings
        users = self._side(self.user_id.weight, self.user_raw, self.user_proj, self.user_graph, settings.n_uu_layers)
        items = self._side(self.item_id.weight, self.item_raw, self.item_proj, self.item_graph, settings.n_ii_layers)
        item_modal = self._refine_items(items[1:])
        user_modal = [self.act(u) for u in users[1:]]  # users: PReLU only (official)
        nodes = torch.cat([torch.cat(user_modal + [users[0]], dim=-1),
                           torch.cat(item_modal + [items[0]], dim=-1)], dim=0)
        out = lightgcn(self.interaction_graph, nodes, settings.n_layers)  # eq. 10-11
        width = self.n_modalities * self.embedding_size
        return out[:, :width], out[:, width:]

    def _final(self, modal: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, side: str) -> torch.Tensor:
        """Eq. (13)-(19) for the given node rows of one side -> (r, (M+1) d) (M d without the
        meta branch). ``rows`` index the side (0-based user or item ids)."""
        offset = 0 if side == "user" else self.n_users
        count = self.n_users if side == "user" else self.n_items
        side_modal = modal[offset:offset + count]
        row_ids = ids[offset:offset + count][rows]
        row_modal = side_modal[rows]
        parts = [self.act(m) + row_ids for m in row_modal.split(self.embedding_size, dim=-1)]  # eq. 18
        meta = self.user_meta if side == "user" else self.item_meta
        if meta is not None:
            share = meta(side_modal, row_ids, rows)  # eq. 13-15
            parts.append(self.act(share) + row_ids)  # eq. 16
        return torch.cat(parts, dim=-1)  # eq. 19 (official order: modal-unique parts, then shared)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final representations of all users (n_users, D) and all items (n_items, D)."""
        modal, ids = self._propagate_all()
        users = torch.arange(self.n_users, device=modal.device)
        items = torch.arange(self.n_items, device=modal.device)
        return self._final(modal, ids, users, "user"), self._final(modal, ids, items, "item")

    # ------------------------------------------------------------------------------------------
    # MMRec interface

    def train(self, mode: bool = True):
        """``train(True)`` drops the evaluation cache (training changes the representations);
        ``train(False)`` keeps it, so MMRec's valid and test passes (each starting with ``eval()``)
        share one forward, and releases the last step's gradients: the host's next batch discards
        them anyway (``zero_grad`` sets them to None), and on Baby they are 0.5 GB that would
        otherwise sit beside the evaluation's score matrices."""
        if not mode:
            for p in self.parameters():
                p.grad = None
        return super().train(mode)

    def calculate_loss(self, interaction: torch.Tensor):
        """Eq. (22) for one batch -> the tuple of its terms (MMRec sums them and logs each):
        ``(bpr, lambda_cl * L_cl, lambda_ort * L_ort, reg)``. ``reg`` is ``reg_weight * ||Theta||^2``
        with weight_decay_mode 'l2', else 0 (the decay then acts in the optimizer step, see
        :meth:`_attach_decay`)."""
        self._eval_cache = None
        settings = self.settings
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        modal, ids = self._propagate_all()
        user_rep = self._final(modal, ids, users, "user")
        item_rep = self._final(modal, ids, torch.cat([pos, neg]), "item")
        pos_rep, neg_rep = item_rep.split(len(pos))
        bpr = bpr_loss((user_rep * pos_rep).sum(-1), (user_rep * neg_rep).sum(-1))  # eq. 21

        zero = bpr.new_zeros(())
        d = self.embedding_size
        cl = zero
        if settings.cl_loss_weight > 0 and self.n_modalities > 1:  # eq. 12 on unique batch users / items
            u_rows = torch.unique(users)
            i_rows = torch.unique(torch.cat([pos, neg])) + self.n_users
            cl_u = pairwise_sum(list(modal[u_rows].split(d, dim=-1)),
                                lambda a, b: info_nce(a, b, settings.cl_temperature))
            cl_i = pairwise_sum(list(modal[i_rows].split(d, dim=-1)),
                                lambda a, b: info_nce(a, b, settings.cl_temperature))
            cl = settings.cl_loss_weight * (cl_u + cl_i)
        ort = zero
        if settings.effective_ort_weight > 0 and self.n_modalities > 1:  # eq. 17 on batch users / positives
            ort_u = pairwise_sum(list(modal[users].split(d, dim=-1)), orthogonal_loss)
            ort_i = pairwise_sum(list(modal[pos + self.n_users].split(d, dim=-1)), orthogonal_loss)
            ort = settings.effective_ort_weight * (ort_u + ort_i)
        reg = zero
        if settings.weight_decay_mode == "l2" and settings.reg_weight > 0:
            reg = settings.reg_weight * l2_penalty(p for p in self.parameters() if p.requires_grad)
        return bpr, cl, ort, reg
