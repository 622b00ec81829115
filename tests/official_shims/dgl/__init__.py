"""Test-only stand-in for the few DGL calls the MGDCF / MIG-GT authors' code makes, in plain torch.

DGL has no wheel for the torch this project pins, so the parity tests import the authors' modules
with this package on sys.path instead (only when the real ``dgl`` cannot be imported). It covers
exactly: ``graph((src, dst), num_nodes)``, ``add_reverse_edges``, ``add_self_loop``, ``to_simple``,
``seed``, and on a graph ``num_nodes``, ``num_edges``, ``edges``, ``in_degrees``, ``out_degrees``,
``ndata`` / ``edata``, ``local_scope``, ``apply_edges`` and ``update_all`` with the message and
reduce functions of :mod:`dgl.function` below (``u_mul_v``, ``u_mul_e``, ``sum``). Semantics follow
DGL's documentation: edges are directed ``src -> dst``; ``update_all`` sums the messages arriving
at each node (0 for a node without in-edges); ``local_scope`` discards feature changes made inside it.
"""
from __future__ import annotations

import contextlib

import torch

from . import function  # noqa: F401  (dgl.function is imported by the authors' modules)


class DGLGraph:
    def __init__(self, src: torch.Tensor, dst: torch.Tensor, num_nodes: int):
        self.src = torch.as_tensor(src, dtype=torch.long)
        self.dst = torch.as_tensor(dst, dtype=torch.long)
        self._num_nodes = int(num_nodes)
        self.ndata: dict = {}
        self.edata: dict = {}

    def num_nodes(self) -> int:
        return self._num_nodes

    def num_edges(self) -> int:
        return int(self.src.numel())

    def edges(self):
        return self.src, self.dst

    def in_degrees(self) -> torch.Tensor:
        return torch.bincount(self.dst, minlength=self._num_nodes)

    def out_degrees(self) -> torch.Tensor:
        return torch.bincount(self.src, minlength=self._num_nodes)

    def to(self, device) -> "DGLGraph":
        moved = DGLGraph(self.src.to(device), self.dst.to(device), self._num_nodes)
        moved.ndata = {k: v.to(device) for k, v in self.ndata.items()}
        moved.edata = {k: v.to(device) for k, v in self.edata.items()}
        return moved

    @contextlib.contextmanager
    def local_scope(self):
        saved_n, saved_e = dict(self.ndata), dict(self.edata)
        try:
            yield
        finally:
            self.ndata, self.edata = saved_n, saved_e

    def _edge_view(self, message):
        side = {"u": self.ndata, "v": self.ndata, "e": self.edata}
        index = {"u": self.src, "v": self.dst, "e": None}

        def fetch(kind, name):
            value = side[kind][name]
            return value if index[kind] is None else value[index[kind]]

        left = fetch(message.lhs_kind, message.lhs)
        right = fetch(message.rhs_kind, message.rhs)
        # DGL broadcasts feature shapes: an (E,) edge weight scales every column of (E, d)
        while right.dim() < left.dim():
            right = right.unsqueeze(-1)
        while left.dim() < right.dim():
            left = left.unsqueeze(-1)
        return left * right

    def apply_edges(self, message) -> None:
        self.edata[message.out] = self._edge_view(message)

    def update_all(self, message, reduce) -> None:
        messages = self._edge_view(message)
        if reduce.op != "sum" or reduce.msg != message.out:
            raise NotImplementedError("the shim reduces with sum over the message just built only")
        out = messages.new_zeros((self._num_nodes,) + tuple(messages.shape[1:]))
        self.ndata[reduce.out] = out.index_add_(0, self.dst, messages)


def graph(edges, num_nodes: int) -> DGLGraph:
    src, dst = edges
    return DGLGraph(torch.as_tensor(src), torch.as_tensor(dst), num_nodes)


def add_reverse_edges(g: DGLGraph) -> DGLGraph:
    return DGLGraph(torch.cat([g.src, g.dst]), torch.cat([g.dst, g.src]), g.num_nodes())


def add_self_loop(g: DGLGraph) -> DGLGraph:
    nodes = torch.arange(g.num_nodes())
    return DGLGraph(torch.cat([g.src, nodes]), torch.cat([g.dst, nodes]), g.num_nodes())


def to_simple(g: DGLGraph) -> DGLGraph:
    pairs = torch.unique(torch.stack([g.src, g.dst], dim=1), dim=0)
    return DGLGraph(pairs[:, 0], pairs[:, 1], g.num_nodes())


def seed(value: int) -> None:
    torch.manual_seed(value)
