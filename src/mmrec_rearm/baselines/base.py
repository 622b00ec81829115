"""What the five baselines share on top of MMRec's ``GeneralRecommender``: the sizes every one of
them reads, the training matrix and its normalised graph, edge dropout on a fixed graph, the modal
item features of MMRec's two slots, and scoring from representations that are computed once per
evaluation pass.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from ..data import training_matrix
from ..errors import DatasetError
from ..host import BaseRecommender, CachedScoring, config_value, dataset_folder
from ..modalities import selected_modalities
from ..model.layers import SparseGraph, normalized_interaction_graph
from .settings import Settings

__all__ = ["BaselineRecommender", "EdgeDropout", "training_interactions"]


def training_interactions(dataloader: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """The training matrix ``(n_users, n_items)`` float32 0/1 (duplicates merged) from the host's
    ``dataloader.inter_matrix(form='coo')``."""
    coo = dataloader.inter_matrix(form="coo")
    matrix = training_matrix(np.asarray(coo.row), np.asarray(coo.col), n_users, n_items)
    if matrix.shape != (n_users, n_items):
        raise DatasetError(f"interaction matrix has shape {matrix.shape}, expected "
                           f"(n_users={n_users}, n_items={n_items})")
    return matrix


class EdgeDropout:
    """Edge-dropped copies of a fixed graph ``A`` (n, n): each stored entry ``a_ij`` is kept with
    probability ``1 - p`` (independently of ``a_ji``: dropout on the list of directed edges, as
    ``nn.Dropout`` on a DGL graph's edge weights does) and scaled by ``1 / (1 - p)``.

    The storage order of ``A^T`` is computed once, so a draw costs one uniform vector of nnz
    numbers and two CSR tensors sharing ``A``'s index arrays. Draws come from torch's global
    generator (MMRec seeds it).
    """

    def __init__(self, graph: SparseGraph):
        self.graph = graph
        crow = graph.forward_matrix.crow_indices().cpu().numpy()
        cols = graph.forward_matrix.col_indices().cpu().numpy()
        rows = np.repeat(np.arange(graph.shape[0]), np.diff(crow))
        order = np.lexsort((rows, cols))  # by column, then row: the CSR order of A^T
        t_crow = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=graph.shape[1]))])
        self._transpose = tuple(torch.from_numpy(a.astype(np.int64)) for a in (t_crow, rows[order], order))

    def __call__(self, p: float) -> SparseGraph:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"edge dropout rate must lie in [0, 1), got {p}")
        if p == 0.0:
            return self.graph
        forward = self.graph.forward_matrix
        values = forward.values()
        kept = values * (torch.rand(values.shape, device=values.device) >= p).to(values.dtype) / (1.0 - p)
        if self._transpose[0].device != values.device:  # moved once (the graph follows model.to), not per draw
            self._transpose = tuple(t.to(values.device) for t in self._transpose)
        t_crow, t_cols, order = self._transpose
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            dropped = torch.sparse_csr_tensor(forward.crow_indices(), forward.col_indices(), kept,
                                              size=self.graph.shape, check_invariants=False)
            dropped_t = torch.sparse_csr_tensor(t_crow, t_cols, kept[order],
                                                size=self.graph.shape[::-1], check_invariants=False)
        return SparseGraph.from_tensors(dropped, dropped_t)


class BaselineRecommender(CachedScoring, BaseRecommender):
    """Base of the baselines. Subclasses implement :meth:`forward` (all users' and all items'
    final representations, ``(n_users, D)`` and ``(n_items, D)``) and ``calculate_loss``, and set
    :attr:`interaction_graph` (usually :meth:`training_graph`).

    Provides :attr:`interactions` (the training matrix ``(n_users, n_items)``, 0/1 float32 CSR,
    duplicates merged), :meth:`training_graph`, :meth:`step_graph` (edge dropout),
    :meth:`modal_features` and, through :class:`~mmrec_rearm.host.CachedScoring`, MMRec's scoring
    from representations computed once per evaluation pass (a model whose representations depend
    on more than its parameters and buffers drops ``_eval_cache`` when that changes).
    """

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        self.interactions = training_interactions(dataloader, self.n_users, self.n_items)
        self.interaction_graph: Optional[SparseGraph] = None  # set by the subclass
        self._edge_dropout: Optional[EdgeDropout] = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    def read_settings(self, config: Any, n_layers: Optional[int] = None, **options: Any) -> Settings:
        """This model's :class:`~.settings.Settings` (``options``: its authors' names, presets), after
        reading the sizes the baselines share: :attr:`embedding_size` (d, default 64) and, where
        ``n_layers`` gives the model's default, :attr:`n_layers` (propagation layers K >= 0)."""
        settings = Settings(config, type(self).__name__, **options)
        self.embedding_size = settings.integer("embedding_size", 64, 1)
        if n_layers is not None:
            self.n_layers = settings.integer("n_layers", n_layers, 0)
        return settings

    def training_graph(self, self_loops: bool = False, norm: str = "sym") -> SparseGraph:
        """``D^-1/2 (A [+ I]) D^-1/2`` (``norm='rw'``: ``D^-1 (A [+ I])``) of the bipartite
        training graph, (N, N) with users first."""
        return SparseGraph(normalized_interaction_graph(self.interactions, self_loops=self_loops, norm=norm),
                           self.torch_device)

    def step_graph(self, drop_rate: float) -> SparseGraph:
        """:attr:`interaction_graph`, edge-dropped at ``drop_rate`` (a fresh draw per call) in
        training mode."""
        if not self.training or drop_rate == 0.0:
            return self.interaction_graph
        if self._edge_dropout is None or self._edge_dropout.graph is not self.interaction_graph:
            self._edge_dropout = EdgeDropout(self.interaction_graph)
        return self._edge_dropout(drop_rate)

    def modal_features(self, config: Any) -> Tuple[List[str], List[torch.Tensor]]:
        """The item features MMRec loaded into ``v_feat`` / ``t_feat`` (vision slot, then text slot;
        empty slots left out) -> (names, (n_items, d_m) float tensors). Names as for REARM
        (:func:`mmrec_rearm.modalities.selected_modalities`: the file stems, made distinct)."""
        name = type(self).__name__
        get = lambda key: config_value(config, key)  # noqa: E731
        folder = dataset_folder(config)
        slots = selected_modalities(get, folder, "all", extra_files=())
        tensors = (getattr(self, "v_feat", None), getattr(self, "t_feat", None))
        found = [(m.name, tensors[m.slot.index]) for m in slots if tensors[m.slot.index] is not None]
        if not found:
            raise DatasetError(
                f"no item features in {folder}: neither vision_feature_file={get('vision_feature_file')!r} nor "
                f"text_feature_file={get('text_feature_file')!r} exists there; {name} needs item features "
                "(at least one file).")
        for stem, tensor in found:
            if tensor.dim() != 2 or tensor.shape[0] != self.n_items:
                raise DatasetError(f"{name}: feature file {stem!r} has shape {tuple(tensor.shape)}, "
                                   f"expected (n_items={self.n_items}, d).")
        return [stem for stem, _ in found], [tensor.float() for _, tensor in found]

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
