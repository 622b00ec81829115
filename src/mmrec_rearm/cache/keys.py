"""Cache keys: sha256 fingerprints of everything a cached matrix depends on.

:func:`fingerprint` keys REARM's homogeneous graphs (training interactions, item features, graph
parameters, :data:`~mmrec_rearm.graphs.BUILDER_VERSION`); :func:`data_fingerprint` identifies the data alone (stored in
checkpoints, to check the data a checkpoint is used with); :func:`content_key` keys any other derived sparse matrices that are a
pure function of some arrays and parameters (e.g. a baseline's item kNN graphs). Both hash
length-prefixed fields, so no two different inputs give the same byte stream, and both include
:data:`FORMAT_VERSION` and the graph builders' version (``content_key`` also the source of any
other builder module it is given), so a change of a builder's output invalidates its entries. No torch, no MMRec.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from .. import graphs as _graphs
from ..data import TrainingData
from ..graphs import GraphParams

__all__ = ["FORMAT_VERSION", "fingerprint", "content_key", "params_json"]

#: Bumped whenever the stored layout or the meaning of a stored graph changes; part of every key.
FORMAT_VERSION = 1


def _frame(h: "hashlib._Hash", label: str, payload: bytes) -> None:
    # Label + length prefix: no two different field sequences can produce the same byte stream.
    h.update(label.encode("ascii") + b"\0" + len(payload).to_bytes(8, "little"))
    h.update(payload)


def _frame_array(h: "hashlib._Hash", label: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    header = json.dumps([list(arr.shape), arr.dtype.str]).encode("ascii")
    _frame(h, label + "/header", header)
    h.update(label.encode("ascii") + b"\0" + arr.nbytes.to_bytes(8, "little"))
    if arr.nbytes:
        # memoryview: hashlib streams the array's own memory, no copy of a 115 MB feature matrix.
        h.update(memoryview(arr).cast("B"))


_SOURCE_DIGESTS: Dict[str, str] = {}


def _module_digest(module) -> str:
    """sha256 of a module's source file (or, frozen / zipped, of the package version)."""
    name = module.__name__
    if name not in _SOURCE_DIGESTS:
        try:
            source = Path(module.__file__).read_bytes()
        except (OSError, TypeError):  # frozen / zipped install: fall back to the package version
            from importlib import metadata

            try:
                source = ("version:" + metadata.version("mmrec-rearm")).encode()
            except metadata.PackageNotFoundError:
                source = b"unknown"
        _SOURCE_DIGESTS[name] = hashlib.sha256(source).hexdigest()
    return _SOURCE_DIGESTS[name]


def _frame_builder_version(h: "hashlib._Hash") -> None:
    # The version of the graph builders' output, not their source: a refactor or a comment keeps
    # every key, a change of output cannot ship without a new version (tests/test_graph_version.py).
    _frame(h, "builder_version", str(int(_graphs.BUILDER_VERSION)).encode("ascii"))


def _canonical_csr(matrix) -> sp.csr_matrix:
    m = sp.csr_matrix(matrix)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()  # sorts column indices and merges repeats
    return m


def fingerprint(data: TrainingData, params: GraphParams) -> str:
    """sha256 hex key of every input of :func:`~mmrec_rearm.graphs.build_graphs`.

    Hashed, in order: ``FORMAT_VERSION``; ``graphs.BUILDER_VERSION``;
    ``n_users``, ``n_items``; the training matrix ``(n_users, n_items)`` in canonical CSR form
    (sorted indices; ``indptr`` and ``indices`` as int64, values as float32); for each modality in
    order its name, shape, dtype and raw bytes ``(n_items, d_m)``; ``params.to_dict()`` as JSON
    with sorted keys. Paths are not hashed: a moved dataset keeps its key, a changed byte does not.
    sha256 (with the CPU's SHA extensions faster than blake2b) streams the arrays' own memory.
    """
    h = hashlib.sha256()
    _frame(h, "format", str(int(FORMAT_VERSION)).encode("ascii"))
    _frame_builder_version(h)
    _hash_data(h, data)
    _frame(h, "params", params_json(params).encode("utf-8"))
    return h.hexdigest()


def _hash_data(h: "hashlib._Hash", data: TrainingData, names: bool = True) -> None:
    """Frame the data part of a key; ``names=False`` frames modalities by position instead of name."""
    _frame(h, "counts", f"{int(data.n_users)},{int(data.n_items)}".encode("ascii"))
    m = _canonical_csr(data.interactions)
    _frame_array(h, "train/indptr", m.indptr.astype("<i8", copy=False))
    _frame_array(h, "train/indices", m.indices.astype("<i8", copy=False))
    _frame_array(h, "train/values", m.data.astype("<f4", copy=False))
    labels = list(data.features) if names else [str(i) for i in range(len(data.features))]
    _frame(h, "modalities", json.dumps(labels).encode("utf-8"))
    for label, array in zip(labels, data.features.values()):
        _frame(h, "modality", label.encode("utf-8"))
        _frame_array(h, "features", np.asarray(array))


def data_fingerprint(data: TrainingData) -> str:
    """sha256 hex of the data alone: the part of :func:`fingerprint` that describes ``data`` (user
    and item counts, the canonical training matrix, each modality's bytes in order), without the
    graph parameters, the builder or the modality names (which come from file names). A checkpoint
    stores it, so that the data it is used with can be checked to be the data it was trained on
    (permuted ids change the training matrix, so the fingerprint)."""
    h = hashlib.sha256()
    _frame(h, "data-fingerprint", b"1")
    _hash_data(h, data, names=False)
    return h.hexdigest()


def content_key(kind: str, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
                builders: Sequence[ModuleType] = ()) -> str:
    """sha256 hex key of any derived matrices that are a pure function of ``arrays``, ``params``
    and the source of the ``builders`` modules (e.g. a baseline's item kNN graphs).

    Hashed, in order: ``FORMAT_VERSION``; ``kind`` (so two artefacts of the same inputs never
    share a key); ``graphs.BUILDER_VERSION`` and the sha256 of each builder module's source; the array names
    in order, then each name, shape, dtype and raw bytes; ``params`` as JSON with sorted keys.
    """
    h = hashlib.sha256()
    _frame(h, "format", str(int(FORMAT_VERSION)).encode("ascii"))
    _frame(h, "kind", str(kind).encode("utf-8"))
    _frame_builder_version(h)
    for module in builders:
        _frame(h, "builder", _module_digest(module).encode("ascii"))
    names = [str(name) for name in arrays]
    _frame(h, "arrays", json.dumps(names).encode("utf-8"))
    for name in names:
        _frame(h, "array", name.encode("utf-8"))
        _frame_array(h, "values", np.asarray(arrays[name]))
    _frame(h, "params", json.dumps(dict(params), sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def params_json(params: GraphParams) -> str:
    return json.dumps(params.to_dict(), sort_keys=True, separators=(",", ":"))

