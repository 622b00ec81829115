"""What the graph baselines (ApeGNN, MGDN, MIG-GT) share on top of MMRec's ``GeneralRecommender``:
validated settings with optional per-dataset presets, the training matrix and its normalised graph,
edge dropout on a fixed :class:`~mmrec_rearm.model.layers.SparseGraph`, and scoring from
representations that are computed once per evaluation pass.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import training_matrix
from ..errors import ConfigError
from ..host import BaseRecommender, CachedScoring, config_value
from ..model.layers import SparseGraph, normalized_interaction_graph
from ..model.presets import _choice, _flag, _number, describe, resolve

__all__ = ["Settings", "EdgeDropout", "GraphRecommender"]


class Settings:
    """Reads one model's keys from MMRec's ``Config`` (or a mapping), validating each.

    With ``presets`` (dataset name -> {key: value}, e.g. the authors' per-dataset settings), a key
    of the presets that is unset (``~``) is filled by the rule of
    :func:`mmrec_rearm.model.presets.resolve`: the run's config, else the dataset YAML, else the
    dataset's preset, else the ``fallback`` preset. Every value read is kept in :attr:`values`.
    """

    def __init__(self, config: Any, owner: str,
                 presets: Optional[Mapping[str, Mapping[str, Any]]] = None, fallback: str = "baby"):
        self.owner = owner
        self.get = lambda key, default=None: config_value(config, key, default)  # noqa: E731
        self.dataset = str(self.get("dataset", "") or "")
        self.resolved = (resolve(lambda key: self.get(key), self.dataset, presets=presets,
                                 fallback=fallback, model=owner) if presets else None)
        self.values: Dict[str, Any] = {}

    def _raw(self, key: str, default: Any) -> Any:
        if self.resolved is not None and key in self.resolved.values:
            return self.resolved.values[key]
        return self.get(key, default)

    def _keep(self, key: str, value: Any) -> Any:
        self.values[key] = value
        return value

    def integer(self, key: str, default: int, low: float = 0, high: float = float("inf")) -> int:
        return self._keep(key, _number(key, self._raw(key, default), int, low, high, model=self.owner))

    def real(self, key: str, default: float, low: float = 0.0, high: float = float("inf"),
             low_open: bool = False) -> float:
        return self._keep(key, _number(key, self._raw(key, default), float, low, high, low_open,
                                       model=self.owner))

    def rate(self, key: str, default: float) -> float:
        """A dropout rate in [0, 1)."""
        value = self.real(key, default, 0.0, 1.0)
        if value >= 1.0:
            raise ConfigError(f"{self.owner} config key '{key}' is a dropout rate and must lie in "
                              f"[0, 1), got {value!r}.")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self._keep(key, _flag(key, self._raw(key, default), model=self.owner))

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        return self._keep(key, _choice(key, self._raw(key, default), choices, model=self.owner))

    def summary(self) -> str:
        """Log lines: the preset applied (if any) and every setting."""
        head = describe(self.resolved, self.dataset, model=self.owner) + "\n" if self.resolved else ""
        return head + f"{self.owner} settings: " + ", ".join(f"{k}={v}" for k, v in self.values.items())


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
        t_crow, t_cols, order = (t.to(values.device) for t in self._transpose)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            dropped = torch.sparse_csr_tensor(forward.crow_indices(), forward.col_indices(), kept,
                                              size=self.graph.shape, check_invariants=False)
            dropped_t = torch.sparse_csr_tensor(t_crow, t_cols, kept[order],
                                                size=self.graph.shape[::-1], check_invariants=False)
        return SparseGraph.from_tensors(dropped, dropped_t)


class GraphRecommender(CachedScoring, BaseRecommender):
    """Base of the graph baselines. Subclasses implement :meth:`forward` (all users' and all
    items' final representations, ``(n_users, D)`` and ``(n_items, D)``) and ``calculate_loss``.

    Provides :attr:`interactions` (the training matrix ``(n_users, n_items)``, 0/1 float32 CSR,
    duplicates merged), :meth:`interaction_graph` (subclasses keep theirs in :attr:`graph`),
    :meth:`step_graph` (edge dropout) and, through :class:`~mmrec_rearm.host.CachedScoring`,
    MMRec's scoring from representations computed once per evaluation pass.
    """

    def __init__(self, config: Any, dataloader: Any):
        super().__init__(config, dataloader)
        coo = dataloader.inter_matrix(form="coo")
        self.interactions = training_matrix(coo.row, coo.col, self.n_users, self.n_items)
        self.graph: Optional[SparseGraph] = None  # set by the subclass (interaction_graph)
        self._edge_dropout: Optional[EdgeDropout] = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    def interaction_graph(self, self_loops: bool = False) -> SparseGraph:
        """``D^-1/2 (A [+ I]) D^-1/2`` of the bipartite training graph, (N, N) with users first."""
        return SparseGraph(normalized_interaction_graph(self.interactions, self_loops=self_loops),
                           self.torch_device)

    def step_graph(self, drop_rate: float) -> SparseGraph:
        """:attr:`graph`, edge-dropped at ``drop_rate`` (a fresh draw per call) in training mode."""
        if not self.training or drop_rate == 0.0:
            return self.graph
        if self._edge_dropout is None or self._edge_dropout.graph is not self.graph:
            self._edge_dropout = EdgeDropout(self.graph)
        return self._edge_dropout(drop_rate)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
