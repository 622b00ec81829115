"""Item feature files (``.npy``, one ``(n_items, d_m)`` array per modality): reading them without
pickle, checking them before anything else reads them, and validating the arrays.

A feature file must be a plain numeric ``.npy`` array. Anything else is refused with a message
that says what the file is instead: text (a CSV or ``np.savetxt`` output renamed to ``.npy``), a
Python pickle (``torch.save`` / ``pickle.dump``; loading one can run code), an ``.npz`` archive, an
object array. :func:`check_npy_file` reads only the header, so a model can check its files before
its host loads them (MMRec's loader uses ``allow_pickle=True``).

This module never imports torch or MMRec.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import DatasetError

__all__ = ["validate_features", "load_feature_file", "check_npy_file", "not_npy_reason"]

PathLike = Union[str, "os.PathLike[str]"]
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_SAVE_HINT = "save the features with np.save(path, features.astype(np.float32))"


def not_npy_reason(path: PathLike) -> Optional[str]:
    """Why the file at ``path`` is not a ``.npy`` array, judged from its first bytes (None when it
    starts like one)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(_NPY_MAGIC):
        return None
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_MAGIC):
        return ("it is a zip archive (an .npz from np.savez, or a torch.save file), not a single array; save one "
                "(n_items, d) array per modality with np.save")
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q"):
        return ("it is a Python pickle (pickle.dump / torch.save), not a .npy array; pickles are never loaded "
                "because loading one can run code; " + _SAVE_HINT)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text.rstrip("\0")):
        shown = text.strip().splitlines()[0][:40] if text.strip() else text[:40]
        return (f"it holds text ({shown!r}...), not a .npy array: a CSV or np.savetxt output named .npy? "
                "Convert it once with np.save(path, np.loadtxt(path_of_the_text, delimiter=...).astype(np.float32))")
    return f"it does not start with the .npy header ({_NPY_MAGIC!r}); re-save it: " + _SAVE_HINT


def check_npy_file(path: PathLike, what: str) -> tuple:
    """Check, from its header only, that ``path`` is a plain numeric 2-D ``.npy`` -> its shape.

    ``what`` names the file in messages (e.g. "feature file for modality 'image' (vision_feature_file)").
    Raises :class:`DatasetError` naming the path and what is wrong.
    """
    path = Path(path)
    try:
        reason = not_npy_reason(path)
        if reason is None:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                shape, _fortran, dtype = (reader(handle) if reader is not None
                                          else np.lib.format._read_array_header(handle, version))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: {what} cannot be read as a .npy file ({exc}); " + _SAVE_HINT + ".") from None
    if reason is not None:
        raise DatasetError(f"{path}: {what}: {reason}.")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DatasetError(f"{path}: {what} holds {dtype} values, not numbers; " + _SAVE_HINT + ".")
    if len(shape) != 2:
        raise DatasetError(f"{path}: {what} has shape {shape}; it must be 2-D (n_items, d).")
    return tuple(int(n) for n in shape)


def validate_features(name: str, array, n_items: int, origin: str = "") -> np.ndarray:
    """Check one modality's array and return it as float32 C-contiguous ``(n_items, d)``.

    ``origin`` (a file path or a description) goes into error messages. An all-zero array is
    accepted with a warning: its cosine similarities are all 0, so its graphs hold self-loops only.
    """
    where = origin or f"feature array '{name}'"
    arr = np.asarray(array)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DatasetError(
            f"{where}: modality '{name}' has dtype {arr.dtype}, not a numeric array; {_SAVE_HINT}."
        )
    if arr.ndim != 2:
        raise DatasetError(
            f"{where}: modality '{name}' has {arr.ndim} dimension(s) (shape {arr.shape}) but must "
            f"be 2-D (n_items, d) with n_items = {n_items}; reshape before saving."
        )
    if arr.shape[0] != n_items:
        raise DatasetError(
            f"{where}: modality '{name}' has {arr.shape[0]} rows but the dataset has {n_items} "
            "items (max itemID over all splits + 1); row i must hold the features of item i."
        )
    if arr.shape[1] == 0:
        raise DatasetError(
            f"{where}: modality '{name}' has 0 columns (shape {arr.shape}); give at least one "
            "feature per item or leave the modality out."
        )
    if arr.dtype.kind == "f":
        _reject_non_finite(name, arr, where, after_cast=False)
    with np.errstate(over="ignore"):  # overflow is reported below with the offending row
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        # float64 values beyond float32's range become inf only now.
        _reject_non_finite(name, out, where, after_cast=True, original=arr)
    if out.size and not out.any():
        warnings.warn(
            f"{where}: modality '{name}' is all zeros {out.shape}: every cosine similarity is 0, so its item "
            "semantic and user interest graphs hold only self-loops (identity) and the modality adds nothing; "
            "check that the right file was saved.", stacklevel=2)
    return out


def _reject_non_finite(name: str, arr: np.ndarray, where: str, after_cast: bool,
                       original: Optional[np.ndarray] = None) -> None:
    # Fast screen: NaN/inf propagate into row sums (float64 sums of float32 cannot overflow);
    # only a non-finite sum needs the exact, element-wise look.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(arr.sum(axis=1, dtype=np.float64)).all():
            return
    finite_rows = np.isfinite(arr).all(axis=1)
    if finite_rows.all():
        return
    row = int(np.argmin(finite_rows))
    col = int(np.argmin(np.isfinite(arr[row])))
    value = float((arr if original is None else original)[row, col])
    reason = "overflows float32" if after_cast else "is not finite"
    raise DatasetError(
        f"{where}: modality '{name}' value {value!r} at row {row} (item {row}), column {col} "
        f"{reason}; {int((~finite_rows).sum())} row(s) are affected. Replace NaN/inf (for "
        "example with the mean feature) before training."
    )


def load_feature_file(name: str, path: PathLike, n_items: int) -> np.ndarray:
    """The validated ``(n_items, d)`` float32 features of modality ``name`` from ``path``."""
    path = Path(path)
    try:
        reason = not_npy_reason(path)
    except OSError as exc:
        raise DatasetError(f"{path}: modality '{name}' is not a readable file ({exc}).") from None
    if reason is not None:
        raise DatasetError(f"{path}: modality '{name}' cannot be used: {reason}.")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # numpy refuses object arrays when pickles are disallowed; also malformed headers.
        raise DatasetError(
            f"{path}: modality '{name}' could not be loaded without pickle ({exc}); the file "
            f"must be a plain numeric .npy array: {_SAVE_HINT}."
        ) from exc
    except OSError as exc:
        raise DatasetError(
            f"{path}: modality '{name}' is not a readable .npy file ({exc}); re-save it with np.save."
        ) from exc
    return validate_features(name, arr, n_items, origin=str(path))
