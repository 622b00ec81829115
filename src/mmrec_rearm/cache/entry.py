"""The stored form of one cache entry: named sparse matrices as raw little-endian arrays plus a
checksummed JSON manifest, and the checks that reject anything damaged.

An entry ``<key>`` holds ``<key>/<name>/<part>`` (part = ``indptr``, ``indices``, ``data`` of a
CSR matrix) and ``<key>/manifest``, which lists dtype, shape, byte length and sha256 of every
array and carries its own checksum. Reading verifies all of them; any mismatch is a
:class:`~mmrec_rearm.errors.CacheCorruptError`. Nothing is pickled; only plain numeric dtypes are
ever decoded.
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Optional, Tuple

import lmdb
import numpy as np
import scipy.sparse as sp

from ..errors import CacheCorruptError, CacheError
from .keys import FORMAT_VERSION

__all__ = ["MANIFEST", "encode", "decode", "parse_manifest", "manifest_digest", "delete_prefix",
           "check_key", "check_matrix_name"]

_PARTS = ("indptr", "indices", "data")
# Only plain numeric little-endian dtypes are ever decoded; anything else in a manifest is damage.
_ALLOWED_DTYPES = {"<i4", "<i8", "<f4", "<f8"}
MANIFEST = "manifest"


def _array_bytes(arr: np.ndarray, allowed: Tuple[str, ...]) -> Tuple[np.ndarray, str]:
    for code in allowed:
        if arr.dtype == np.dtype(code):
            return np.ascontiguousarray(arr, dtype=np.dtype(code)), code
    raise CacheError(f"cannot store an array of dtype {arr.dtype}; expected one of {allowed}")


def encode(key: str, matrices: Dict[str, sp.spmatrix], seconds: Dict[str, float],
            meta: dict) -> Tuple[List[Tuple[bytes, np.ndarray]], bytes]:
    """(lmdb key, array) pairs and the manifest bytes of one entry: named sparse matrices."""
    arrays: List[Tuple[bytes, np.ndarray]] = []
    listing: Dict[str, dict] = {}
    shapes: Dict[str, List[int]] = {}
    for name in matrices:
        check_matrix_name(name)
        m = sp.csr_matrix(matrices[name])
        shapes[name] = [int(m.shape[0]), int(m.shape[1])]
        index_types = ("<i4", "<i8")
        parts = {
            "indptr": _array_bytes(m.indptr, index_types),
            "indices": _array_bytes(m.indices, index_types),
            "data": _array_bytes(m.data, ("<f4", "<f8")),
        }
        for part in _PARTS:
            arr, code = parts[part]
            view = memoryview(arr).cast("B") if arr.nbytes else b""
            listing[f"{name}/{part}"] = {
                "dtype": code,
                "shape": [int(s) for s in arr.shape],
                "nbytes": int(arr.nbytes),
                "sha256": hashlib.sha256(view).hexdigest(),
            }
            arrays.append((f"{key}/{name}/{part}".encode("ascii"), arr))
    body = dict(meta)
    body.update(
        format_version=int(FORMAT_VERSION),
        key=key,
        graphs={name: {"shape": shapes[name], "seconds": float(seconds.get(name, 0.0))}
                for name in matrices},
        arrays=listing,
    )
    body["manifest_sha256"] = manifest_digest(body)
    return arrays, json.dumps(body, sort_keys=True).encode("utf-8")


def manifest_digest(body: dict) -> str:
    rest = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_manifest(raw: bytes, key: str) -> dict:
    try:
        body = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheCorruptError(f"manifest is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise CacheCorruptError(f"manifest is a JSON {type(body).__name__}, not an object")
    if body.get("manifest_sha256") != manifest_digest(body):
        raise CacheCorruptError("manifest checksum mismatch")
    if body.get("format_version") != FORMAT_VERSION:
        raise CacheCorruptError(
            f"manifest format_version {body.get('format_version')!r} != {FORMAT_VERSION}")
    if body.get("key") != key:
        raise CacheCorruptError(f"manifest names key {body.get('key')!r}")
    return body


def decode(txn: "lmdb.Transaction", key: str, raw_manifest,
            names: Optional[Tuple[str, ...]] = None) -> Tuple[Dict[str, sp.csr_matrix], Dict[str, float]]:
    """Verify and load one entry -> (matrices by name, build seconds by name); any inconsistency
    raises CacheCorruptError. ``names``: the matrix names the entry must hold exactly (None: any)."""
    body = parse_manifest(raw_manifest, key)
    try:
        listing = body["arrays"]
        graph_meta = body["graphs"]
        if names is not None and sorted(graph_meta) != sorted(names):
            raise CacheCorruptError(f"entry holds the matrices {sorted(graph_meta)}, expected {sorted(names)}")
        mats = {}
        seconds = {}
        for name in (names if names is not None else tuple(graph_meta)):
            n_rows, n_cols = (int(v) for v in graph_meta[name]["shape"])
            seconds[name] = float(graph_meta[name]["seconds"])
            parts = {part: _load_array(txn, key, f"{name}/{part}", listing[f"{name}/{part}"])
                     for part in _PARTS}
            indptr, indices, values = parts["indptr"], parts["indices"], parts["data"]
            if (indptr.shape != (n_rows + 1,) or indptr[0] != 0 or indices.ndim != 1
                    or indptr[-1] != indices.shape[0] or values.shape != indices.shape):
                raise CacheCorruptError(f"graph '{name}': CSR arrays do not fit shape {(n_rows, n_cols)}")
            mats[name] = sp.csr_matrix((values, indices, indptr), shape=(n_rows, n_cols))
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheCorruptError(f"manifest lacks or mangles a field ({type(exc).__name__}: {exc})") from None
    return mats, seconds


def _load_array(txn: "lmdb.Transaction", key: str, name: str, spec: dict) -> np.ndarray:
    value = txn.get(f"{key}/{name}".encode("ascii"))
    if value is None:
        raise CacheCorruptError(f"array '{name}' is missing")
    code = spec["dtype"]
    if code not in _ALLOWED_DTYPES:
        raise CacheCorruptError(f"array '{name}' has dtype {code!r} (allowed: {sorted(_ALLOWED_DTYPES)})")
    shape = tuple(int(s) for s in spec["shape"])
    dtype = np.dtype(code)
    if len(value) != spec["nbytes"] or int(np.prod(shape)) * dtype.itemsize != spec["nbytes"]:
        raise CacheCorruptError(
            f"array '{name}' holds {len(value)} bytes; manifest says {spec['nbytes']} for shape {shape}")
    if hashlib.sha256(value).hexdigest() != spec["sha256"]:
        raise CacheCorruptError(f"array '{name}' checksum mismatch")
    # value is a view into the memory map, valid only inside the transaction: copy it out.
    return np.frombuffer(value, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def delete_prefix(txn: "lmdb.Transaction", key: str) -> int:
    prefix = f"{key}/".encode("ascii")
    cursor = txn.cursor()
    removed = 0
    if cursor.set_range(prefix):
        while bytes(cursor.key()).startswith(prefix):
            if not cursor.delete():
                break
            removed += 1
    return removed


def check_matrix_name(name: str) -> None:
    if not (isinstance(name, str) and name and name != MANIFEST
            and all(c.isalnum() or c in "_-." for c in name) and name.isascii()):
        raise CacheError(f"cannot store a matrix named {name!r}: use letters, digits, '_', '-', '.' "
                         f"(not {MANIFEST!r}).")


def check_key(key: str) -> None:
    if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
        raise CacheError(f"cache key {key!r} is not a sha256 hex digest; use fingerprint().")


