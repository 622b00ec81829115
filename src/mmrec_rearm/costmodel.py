"""Predicted cost of a REARM run from the dataset's counts and the settings: graphs, parameters, memory.

Pure functions (numbers in, numbers out; no torch, no MMRec), used by ``mmrec-rearm estimate``.

* **Graph build** (:func:`graph_build_cost`): CPU seconds, wall seconds on an otherwise idle
  2-core machine like the reference one, and peak RSS of the build process, per graph. The work
  terms follow the builders: the user co-occurrence graph costs ``sum_i deg_i^2`` sparse
  products, the item one ``sum_u deg_u^2``; a cosine kNN graph of ``n`` nodes costs ``n^2 d``
  multiply-adds and ``n^2`` selections (half of each beyond 65,536 nodes, where square tiles serve
  both sides), the Gram route ``n_items^2 d`` plus its sparse products. The constants per unit of
  work are fitted to bench/results/scale.json (bench/scale.py) on the reference machine.
* **Parameters** (:func:`parameter_counts`): exact, from the layer shapes of ``model/rearm.py``.
* **Training memory** (:func:`training_memory`): parameters, gradients, Adam's two moments,
  activations kept for the backward pass of one training step, graphs, and the evaluation's
  score block. Activations per node and per batch row are linear in the embedding size; their
  coefficients were measured on the model with autograd's saved-tensor hooks and are checked
  against the model at test time (tests/test_costmodel.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["DatasetShape", "ModelShape", "parameter_counts", "activation_bytes", "training_memory",
           "graph_build_cost", "cache_read_cost", "expected_unique", "GIB"]

GIB = float(1 << 30)
_FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class DatasetShape:
    """Counts of one dataset: training split plus the feature widths in model order."""

    n_users: int
    n_items: int
    n_train: int                    # training interactions (nnz of the 0/1 training matrix)
    widths: Tuple[int, ...]         # d_m of each modality the model uses
    item_degree_sq: float = 0.0     # sum over items of (training users)^2
    user_degree_sq: float = 0.0     # sum over users of (training items)^2
    n_rows: int = 0                 # rows of the .inter file (all splits), for the host's own copy


@dataclass(frozen=True)
class ModelShape:
    """The model settings that set its size (see configs/model/REARM.yaml)."""

    embedding_size: int = 64
    rank: int = 3
    use_meta: bool = True
    train_raw_features: bool = True
    attention: str = "scalar"
    contrastive: bool = True        # cl_loss_weight > 0 (InfoNCE over the batch's unique nodes)
    batch_size: int = 2048
    eval_batch_size: int = 4096
    optimiser_states: int = 2       # Adam / AdamW keep two moments per trainable value
    user_knn_k: int = 40
    item_knn_k: int = 10


# --------------------------------------------------------------------------------------------
# Parameters


def parameter_counts(data: DatasetShape, model: ModelShape) -> Dict[str, int]:
    """Parameter (and frozen buffer) counts per part; ``trainable`` excludes frozen raw tables."""
    d, m = model.embedding_size, len(data.widths)
    nodes = data.n_users + data.n_items
    raw = nodes * sum(data.widths)
    blocks = m + (m if m > 1 else 0)  # self-attention per modality, cross-attention when several
    per_block = 8 if model.attention == "scalar" else 3 * d * d
    meta = 0
    if model.use_meta:
        dk = d * model.rank
        generator = (d * dk + dk) + 1 + (dk * dk + dk)
        meta = 2 * ((m * d * d + d) + 2 * generator)  # users and items
    counts = {
        "id_embeddings": nodes * d,
        "raw_tables": raw,
        "projections": 2 * sum(w * d + d for w in data.widths),
        "attention": blocks * per_block,
        "norm_and_activation": 2 * d + 1,
        "meta_networks": meta,
    }
    counts["total"] = sum(counts.values())
    counts["trainable"] = counts["total"] - (0 if model.train_raw_features else raw)
    return counts


# --------------------------------------------------------------------------------------------
# Activations: floats kept for backward per node and per batch row, in units of the embedding size
# d, measured on model/rearm.py with autograd's saved-tensor hooks (M modalities, k = rank):
#   user  2 + 2M                     + meta (M + 2 + 6k)
#   item  2 + 10M + 9M [M > 1]       + meta (M + 2 + 6k)
#   row   6.2 + 28.3 M (M - 1) / 2      + meta (9.1 + 6k)
# and InfoNCE keeps 0.75 float per pair of distinct batch nodes, per pair of modalities.
_PAIR = 0.75


def expected_unique(draws: float, population: int) -> float:
    """Expected number of distinct values among ``draws`` uniform draws from ``population``."""
    if population <= 0:
        return 0.0
    return population * -math.expm1(-draws / population)


def activation_bytes(data: DatasetShape, model: ModelShape, batch_size: Optional[int] = None) -> Dict[str, float]:
    """Bytes of activations one training step keeps for its backward pass.

    REARM propagates over the whole graph at every step, so most of it grows with the node count,
    not with the batch: ``nodes`` (all users and items), ``batch_rows`` (the batch's users, positive
    and negative items) and ``contrastive`` (InfoNCE logits over the batch's distinct users and
    items, one block per pair of modalities).
    """
    b = model.batch_size if batch_size is None else batch_size
    d, m, k = model.embedding_size, len(data.widths), model.rank
    meta = 1.0 if model.use_meta else 0.0
    per_node_meta = meta * (m + 2 + 6 * k)
    user = d * (2 + 2 * m + per_node_meta)
    item = d * (2 + 10 * m + (9 * m if m > 1 else 0) + per_node_meta)
    row = d * (6.2 + 28.3 * m * (m - 1) / 2 + meta * (9.1 + 6 * k))
    pairs = 0.0
    if model.contrastive and m > 1:
        unique_users = expected_unique(b, data.n_users)
        unique_items = expected_unique(2 * b, data.n_items)
        pairs = _PAIR * (unique_users ** 2 + unique_items ** 2) * m * (m - 1) / 2
    out = {"nodes": _FLOAT * (data.n_users * user + data.n_items * item),
           "batch_rows": _FLOAT * b * row, "contrastive": _FLOAT * pairs}
    out["total"] = sum(out.values())
    return out


def _graph_bytes(data: DatasetShape, model: ModelShape) -> float:
    """torch CSR tensors of the two homogeneous graphs and the user-item graph (value + int64 index)."""
    entries = (2 * model.user_knn_k * data.n_users + 2 * model.item_knn_k * data.n_items + 2 * data.n_train)
    return 12.0 * entries + 8.0 * 2 * (data.n_users + data.n_items)


def training_memory(data: DatasetShape, model: ModelShape, device: str = "gpu",
                    batch_size: Optional[int] = None) -> Dict[str, float]:
    """Bytes of one training run's peak, by part; ``device`` "gpu" (the model on a GPU) or "cpu".

    Peak = resident (parameters and frozen tables, graphs, optimiser state, host overhead) + the
    larger of a step's activations and its gradients (activations are released while gradients
    accumulate during backward; the optimiser state stays from the first step on). "gpu" adds the
    CUDA context and the evaluation's score block (``eval_batch_size x n_items``); "cpu" adds the
    host process (Python, torch, MMRec and its data), fitted to bench/results/train.json.
    """
    counts = parameter_counts(data, model)
    params = _FLOAT * counts["total"]
    trainable = _FLOAT * counts["trainable"]
    act = activation_bytes(data, model, batch_size)["total"]
    out = {
        "parameters": params,
        "gradients": trainable,
        "optimiser_state": model.optimiser_states * trainable,
        "activations": act,
        "graphs": _graph_bytes(data, model),
    }
    if device == "gpu":
        out["cuda_context"] = _CUDA_CONTEXT
        out["evaluation"] = _FLOAT * 2 * min(model.eval_batch_size, data.n_users) * data.n_items
        resident = params + out["optimiser_state"] + out["graphs"] + out["cuda_context"]
        step = max(act, trainable)
        out["peak"] = resident + max(step, out["evaluation"])
    else:
        out["host_process"] = _CPU_HOST + _CPU_PER_ROW * data.n_rows
        # the item tables share the host's feature tensors, so the parameters count them once
        resident = params + out["optimiser_state"] + out["graphs"] + out["host_process"]
        out["peak"] = resident + max(act, trainable)
    return out


#: CUDA context and allocator reserve of a fresh process (bytes), typical of current drivers.
_CUDA_CONTEXT = 0.5 * GIB
#: The MMRec host process on the CPU: Python, torch, MMRec with its data frames and loaders, and
#: what model construction leaves allocated besides the model (graph build buffers kept by the
#: allocator); fitted so that Baby (bench/results/train.json) is met.
_CPU_HOST = 1.03 * GIB
_CPU_PER_ROW = 100.0


# --------------------------------------------------------------------------------------------
# Graph build. CPU nanoseconds per unit of work and bytes per stored entry, fitted to
# bench/results/scale.json (reference machine: AMD EPYC, 2 cores, numpy 1.23 / OpenBLAS).

_NS_COOC = 70.0        # per entry of the co-occurrence product (sum of squared degrees)
_NS_MAC = 0.025        # per float32 multiply-add in BLAS
_NS_SELECT = 1.3       # per similarity scanned by the top-k selection (column blocks)
_NS_SELECT_TILE = 3.2  # per tile entry, both sides selected (square tiles)
_NS_SPARSE = 0.6       # per sparse multiply-add of the Gram route
_NS_FUSE = 120.0       # per graph entry written by a fusion (COO -> canonical CSR in float64)
#: Wall = CPU / this on an idle 2-core machine (2 worker threads; BLAS threads with a
#: single-threaded selection; single-threaded fusion). The kNN factor is above the core count
#: because the CPU constants come from runs on a loaded machine, where OpenBLAS threads spin
#: while they wait for a core (CPU time counts the spinning); it is fitted to the quiet Baby and
#: Sports runs of bench/results/graphs.md.
_PARALLEL = {"cooccurrence": 1.8, "knn": 2.3, "fusion": 1.0}
_BASE_BYTES = 0.07 * GIB       # Python, numpy, scipy
# RSS above the data while a step runs, per kept graph entry (n k). The fusion's share also holds
# the graphs built before it and what the allocator kept of earlier steps (RSS does not shrink).
_COOC_ENTRY_BYTES = 80.0        # product blocks' results, ranking and softmax arrays
_COOC_BLOCK_BYTES = 0.15 * GIB  # the product blocks in flight
_KNN_ENTRY_BYTES = 120.0        # running candidates and the assembly of the graph
_FUSE_ENTRY_BYTES = 190.0       # COO arrays, CSR conversion, input graphs, allocator leftovers
_TILE_BYTES = 64 * 2 ** 20     # one similarity tile / column block (graphs.blocks.BLOCK_BYTES)


def _knn_cost(n: int, dim: int, k: int) -> Tuple[float, float, str]:
    """(CPU seconds, working bytes, route) of one cosine kNN graph of ``n`` nodes from features."""
    from .graphs.knn import use_tiles  # numpy / scipy only

    if use_tiles(n, None, None):
        pairs = n * n / 2.0
        seconds = pairs * (dim * _NS_MAC + _NS_SELECT_TILE) * 1e-9
        return seconds, _TILE_BYTES + _KNN_ENTRY_BYTES * n * k, "square tiles"
    pairs = float(n) * n
    return pairs * (dim * _NS_MAC + _NS_SELECT) * 1e-9, _TILE_BYTES + _KNN_ENTRY_BYTES * n * k, "column blocks"


def graph_build_cost(data: DatasetShape, params) -> Dict[str, dict]:
    """Predicted cost of ``build_graphs`` under ``params`` (a GraphParams), per graph and in total.

    Each entry: ``cpu_s``, ``wall_s`` (idle 2-core machine), ``peak_bytes`` (RSS of the build
    process while that graph is built) and a ``note`` (route, work). ``"build"`` sums the times
    and takes the largest peak.
    """
    from .graphs.interest import DENSE_MAX_BYTES, choose_user_route

    n_u, n_i, m = data.n_users, data.n_items, len(data.widths)
    ku, ki = params.user_knn_k, params.item_knn_k
    data_bytes = (_BASE_BYTES + 2 * 8.0 * data.n_train + 8.0 * (n_u + n_i)
                  + _FLOAT * n_i * sum(data.widths))
    out: Dict[str, dict] = {}

    def add(name: str, cpu: float, kind: str, extra: float, note: str) -> None:
        entry = out.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0, "peak_bytes": 0.0, "note": []})
        entry["cpu_s"] += cpu
        entry["wall_s"] += cpu / _PARALLEL[kind]
        entry["peak_bytes"] = max(entry["peak_bytes"], data_bytes + extra)
        entry["note"].append(note)

    if params.uu_co_weight > 0:
        add("user_cooccurrence", _NS_COOC * 1e-9 * data.item_degree_sq, "cooccurrence",
            _COOC_BLOCK_BYTES + _COOC_ENTRY_BYTES * n_u * ku, f"sum deg_i^2 = {data.item_degree_sq:.3g}")
    if params.ii_co_weight > 0:
        add("item_cooccurrence", _NS_COOC * 1e-9 * data.user_degree_sq, "cooccurrence",
            _COOC_BLOCK_BYTES + _COOC_ENTRY_BYTES * n_i * ki, f"sum deg_u^2 = {data.user_degree_sq:.3g}")
    user_w = params.modal_weights("user", m) if params.uu_co_weight < 1 else (0.0,) * m
    item_w = params.modal_weights("item", m) if params.ii_co_weight < 1 else (0.0,) * m
    for dim, wu, wi in zip(data.widths, user_w, item_w):
        route = choose_user_route(n_u, n_i, data.n_train, dim, gram_shared=wi > 0) if wu > 0 else None
        if route == "gram":
            cpu = (_NS_MAC * n_i * n_i * dim + _NS_SPARSE * data.n_train * (n_i + n_u)
                   + _NS_SELECT * float(n_u) * n_u) * 1e-9
            add("user_interest", cpu, "knn", _FLOAT * n_i * n_i + _KNN_ENTRY_BYTES * n_u * ku,
                f"{dim}-d: item Gram {n_i}x{n_i}")
            if wi > 0:
                add("item_semantic", _NS_SELECT * 1e-9 * float(n_i) * n_i, "knn",
                    _FLOAT * n_i * n_i + _KNN_ENTRY_BYTES * n_i * ki, f"{dim}-d: from the Gram")
        elif route == "features":
            cpu, work, how = _knn_cost(n_u, dim, ku)
            dense = _FLOAT * n_u * dim
            add("user_interest", cpu, "knn", work + (dense if dense <= DENSE_MAX_BYTES else 0.0),
                f"{dim}-d: {how}")
        if wi > 0 and route != "gram":
            cpu, work, how = _knn_cost(n_i, dim, ki)
            add("item_semantic", cpu, "knn", work, f"{dim}-d: {how}")
    entries = 3.0 * (n_u * ku + n_i * ki)
    add("fusion", _NS_FUSE * 1e-9 * entries, "fusion", _FUSE_ENTRY_BYTES * (n_u * ku + n_i * ki),
        "weighted sums")
    out["build"] = {"cpu_s": sum(e["cpu_s"] for e in out.values()),
                    "wall_s": sum(e["wall_s"] for e in out.values()),
                    "peak_bytes": max(e["peak_bytes"] for e in out.values()), "note": []}
    for entry in out.values():
        entry["note"] = "; ".join(entry["note"])
    return out


def cache_read_cost(data: DatasetShape, params) -> Dict[str, float]:
    """Seconds and peak bytes of a later run that reads the stored graphs (fingerprint + read)."""
    feature_bytes = _FLOAT * data.n_items * sum(data.widths)
    entries = 5.0 * (data.n_users * params.user_knn_k + data.n_items * params.item_knn_k)
    return {"wall_s": feature_bytes / 1.5e9 + entries * 12.0 / 1.0e9,
            "peak_bytes": _BASE_BYTES + feature_bytes + 16.0 * data.n_train + 12.0 * entries}
