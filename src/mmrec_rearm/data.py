"""Reading and validating an MMRec-format dataset folder.

A dataset folder holds one tab-separated interaction file (``<name>.inter``, header line, columns
``userID``, ``itemID`` and ``x_label`` with 0/1/2 = train/valid/test; other columns are ignored) and
one ``.npy`` array per modality whose row ``i`` describes item ``i``.

The result is a :class:`TrainingData`: the training split as a 0/1 CSR matrix ``(n_users, n_items)``
plus the feature arrays ``(n_items, d_m)``. This module never imports torch or MMRec; the graph
builders and the cache consume its output.

Every problem raises :class:`~mmrec_rearm.errors.DatasetError` whose message names the file, the
field and the offending value, and says what to do.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import scipy.sparse as sp

from .errors import DatasetError
from .features import load_feature_file, validate_features
from .inter_parse import field_bounds, parse_int_column

__all__ = [
    "DEFAULT_FEATURES",
    "feature_paths",
    "REQUIRED_COLUMNS",
    "TrainingData",
    "Interactions",
    "read_dataset",
    "read_interactions",
    "training_matrix",
    "training_data_from_arrays",
    "validate_features",
]

PathLike = Union[str, "os.PathLike[str]"]

#: modality name -> file name looked for when ``read_dataset`` gets no ``features`` mapping.
DEFAULT_FEATURES: Mapping[str, str] = {"image": "image_feat.npy", "text": "text_feat.npy"}
#: columns of the .inter header that must be present (any others are ignored).
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
_SPLIT_NAMES = {0: "train", 1: "valid", 2: "test"}


@dataclass(frozen=True, eq=False)
class TrainingData:
    """The training split of a dataset plus its item features.

    ``eq=False``: instances compare by identity, because a field-wise ``==`` on sparse matrices and
    arrays is ambiguous. Build one with :func:`read_dataset` or :meth:`from_arrays`.
    """

    n_users: int  # max userID over ALL splits + 1 (MMRec's convention)
    n_items: int  # max itemID over ALL splits + 1
    interactions: sp.csr_matrix  # (n_users, n_items) float32 0/1, x_label == 0 rows, duplicates merged
    features: dict  # modality name -> (n_items, d_m) float32 C-contiguous; insertion order = modality order
    source: dict  # "inter" -> path, "<modality>" -> path; empty entries when built from arrays

    def __post_init__(self) -> None:
        shape = (self.n_users, self.n_items)
        if tuple(self.interactions.shape) != shape:
            raise DatasetError(
                f"TrainingData: interactions have shape {tuple(self.interactions.shape)} but "
                f"(n_users, n_items) is {shape}; build the matrix with training_matrix()."
            )
        for name, arr in self.features.items():
            if getattr(arr, "ndim", None) != 2 or arr.shape[0] != self.n_items:
                raise DatasetError(
                    f"TrainingData: feature '{name}' has shape {getattr(arr, 'shape', None)} but "
                    f"must be (n_items={self.n_items}, d); use validate_features()."
                )

    @property
    def modalities(self) -> tuple:
        """Modality names in order, e.g. ``("image", "text")``."""
        return tuple(self.features)

    @property
    def n_train(self) -> int:
        """Number of distinct training (user, item) pairs."""
        return int(self.interactions.nnz)

    def summary(self) -> dict:
        """Counts for logs: users, items, training pairs, density and feature widths."""
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": self.n_train,
            "density": self.n_train / max(1, self.n_users * self.n_items),
            "features": {name: int(arr.shape[1]) for name, arr in self.features.items()},
        }

    @classmethod
    def from_arrays(
        cls,
        users,
        items,
        n_users: int,
        n_items: int,
        features: Mapping[str, Optional[np.ndarray]],
        source: Optional[Mapping[str, str]] = None,
    ) -> "TrainingData":
        """:class:`TrainingData` from training id arrays ``(n,)`` and feature arrays ``(n_items, d_m)``.

        For hosts (MMRec) that already hold the training pairs and the features in memory. A ``None``
        feature (MMRec's value for a modality without a file) is dropped; at least one must remain.
        ``source`` is copied as given (paths for fingerprints and messages), empty when omitted.
        """
        if not isinstance(features, Mapping):
            raise DatasetError(
                f"features must be a mapping modality name -> array, got {type(features).__name__}; "
                "e.g. {'image': v_feat, 'text': t_feat}."
            )
        src = dict(source or {})
        kept = {}
        for name, arr in features.items():
            if arr is None:
                continue
            kept[name] = validate_features(name, arr, int(n_items), origin=src.get(name, ""))
        if not kept:
            raise DatasetError(
                f"no feature array given (modalities {list(features)} are all None); REARM needs at "
                "least one modality's item features."
            )
        interactions = training_matrix(users, items, n_users, n_items)
        if interactions.nnz == 0:
            raise DatasetError(
                f"{src.get('inter', 'training arrays')}: the training split is empty; pass at least "
                "one (user, item) pair."
            )
        return cls(int(n_users), int(n_items), interactions, kept, src)


# --------------------------------------------------------------------------------------------
# Training matrix


def training_matrix(users, items, n_users: int, n_items: int) -> sp.csr_matrix:
    """The 0/1 user-item matrix ``(n_users, n_items)`` float32 from id arrays ``(n,)``.

    Repeated (user, item) pairs count once. The result is canonical CSR (sorted indices, no
    duplicates), so its bytes are a deterministic function of the set of pairs.
    """
    u = np.asarray(users, dtype=np.int64).ravel()
    i = np.asarray(items, dtype=np.int64).ravel()
    if u.shape != i.shape:
        raise DatasetError(
            f"training_matrix: users has {u.size} entries but items has {i.size}; pass one user "
            "id and one item id per interaction."
        )
    n_users, n_items = int(n_users), int(n_items)
    for field, ids, bound in (("users", u, n_users), ("items", i, n_items)):
        if ids.size and (ids.min() < 0 or ids.max() >= bound):
            bad = ids[(ids < 0) | (ids >= bound)][0]
            raise DatasetError(
                f"training_matrix: {field} contains id {int(bad)} outside [0, {bound}); ids must "
                "be 0-based and below the count passed in."
            )
    # One int64 key per pair: np.unique sorts by (user, item) and merges duplicates at once.
    keys = np.unique(u * n_items + i)
    rows = keys // max(n_items, 1)
    cols = keys - rows * n_items
    index_dtype = np.int32 if max(n_users, n_items, keys.size) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_users + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    data = np.ones(keys.size, dtype=np.float32)
    mat = sp.csr_matrix((data, cols.astype(index_dtype), indptr), shape=(n_users, n_items))
    mat.has_sorted_indices = True
    return mat


# --------------------------------------------------------------------------------------------
# The .inter file


@dataclass(frozen=True)
class Interactions:
    """The rows of an .inter file (what :func:`read_interactions` returns)."""

    users: np.ndarray  # (n_rows,) int64
    items: np.ndarray  # (n_rows,) int64
    labels: np.ndarray  # (n_rows,) int64 in {0, 1, 2}

    @property
    def n_users(self) -> int:
        """Max userID over all splits + 1 (MMRec's convention); needs at least one row."""
        return int(self.users.max()) + 1

    @property
    def n_items(self) -> int:
        """Max itemID over all splits + 1; needs at least one row."""
        return int(self.items.max()) + 1

    def split_matrix(self, label: int) -> sp.csr_matrix:
        """The 0/1 matrix ``(n_users, n_items)`` of the rows with ``x_label == label`` (0 train,
        1 valid, 2 test); see :func:`training_matrix`."""
        rows = self.labels == label
        return training_matrix(self.users[rows], self.items[rows], self.n_users, self.n_items)


def read_interactions(path: PathLike) -> Interactions:
    """Parse and validate the ``userID``, ``itemID``, ``x_label`` columns of an .inter file.

    Returns id arrays ``(n_rows,)`` int64 for every row of every split.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: interaction file not found; give inter_file= or name it "
            f"'<folder name>.inter' inside the dataset folder."
        )
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head_end = raw.find(b"\n")
    header_bytes = raw if head_end < 0 else raw[:head_end]
    body = b"" if head_end < 0 else raw[head_end + 1 :]
    try:
        header = [h.strip() for h in header_bytes.decode("utf-8").split("\t")]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: header line is not UTF-8 text ({exc}); save the file as UTF-8.") from exc
    columns = {}
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise DatasetError(
                f"{path}: column '{col}' missing from the header {header!r}; the header must be "
                f"tab-separated and contain {', '.join(REQUIRED_COLUMNS)}."
            )
        columns[col] = header.index(col)

    starts, ends, line_no = field_bounds(path, body, len(header))
    users = parse_int_column(path, body, starts, ends, line_no, columns["userID"], "userID")
    items = parse_int_column(path, body, starts, ends, line_no, columns["itemID"], "itemID")
    labels = parse_int_column(path, body, starts, ends, line_no, columns["x_label"], "x_label")
    for field, ids in (("userID", users), ("itemID", items)):
        if ids.size and ids.min() < 0:
            row = int(np.argmax(ids < 0))
            raise DatasetError(
                f"{path}: line {line_no[row]}, column '{field}' has negative id {int(ids[row])}; "
                "ids must be 0-based non-negative integers (re-index the dataset)."
            )
    bad = (labels < 0) | (labels > 2)
    if bad.any():
        row = int(np.argmax(bad))
        raise DatasetError(
            f"{path}: line {line_no[row]}, column 'x_label' has value {int(labels[row])}; "
            "x_label must be 0 (train), 1 (valid) or 2 (test)."
        )
    for field, ids in (("userID", users), ("itemID", items)):
        _check_id_range(path, body, starts, ends, line_no, field, ids)
    return Interactions(users=users, items=items, labels=labels)


#: Ids may leave gaps (MMRec sizes its tables by the largest id + 1), but not this many: a count
#: above both 10x the distinct ids and distinct + 1000 means a stray or mistyped id.
MAX_ID_SPREAD = 10
_MIN_SLACK = 1000


def _check_id_range(path: Path, body: bytes, starts, ends, line_no, field: str, ids: np.ndarray) -> None:
    """Refuse ids far beyond what the file holds: the largest id + 1 becomes the user / item count,
    so one stray id (100000000) would size every matrix and embedding table for 100 M nodes."""
    if ids.size == 0:
        return
    count = int(ids.max()) + 1
    distinct = int(np.unique(ids).size)
    needed = count * 16  # two int64 per id for the CSR row pointers and the counts, before any model table
    available = _available_memory()
    if count <= max(MAX_ID_SPREAD * distinct, distinct + _MIN_SLACK) and (available is None or needed < available):
        return
    row = int(np.argmax(ids))
    line = body[starts[row, 0]:ends[row, -1]].decode("utf-8", "replace")
    what = "users" if field == "userID" else "items"
    why = (f"more than {MAX_ID_SPREAD}x the {distinct} distinct {field} values the file holds"
           if count > max(MAX_ID_SPREAD * distinct, distinct + _MIN_SLACK)
           else f"the index arrays alone would need {needed / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB available")
    raise DatasetError(
        f"{path}: line {int(line_no[row])} ({line!r}) has {field} {int(ids[row])}, which would make {count} {what} "
        f"(the largest id + 1, MMRec's convention): {why}. Is it a stray or mistyped row? Ids must be re-indexed "
        f"to 0..{distinct - 1} (or close to it); fix or remove the line."
    )


def _available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --------------------------------------------------------------------------------------------
# Public entry points


def read_dataset(
    folder: PathLike,
    inter_file: Optional[PathLike] = None,
    features: Optional[Mapping[str, PathLike]] = None,
) -> TrainingData:
    """Read an MMRec dataset folder into :class:`TrainingData`.

    ``inter_file`` defaults to ``<folder name>.inter``. ``features`` maps modality name to a file
    (relative to ``folder`` or absolute) and fixes the modality order; an explicitly named file
    that is missing is an error. Without it, ``image_feat.npy`` then ``text_feat.npy`` are looked
    for and a missing one is skipped with a warning, as long as one modality remains.

    ``n_users`` / ``n_items`` are the max ids over all splits + 1; ``interactions`` holds only
    x_label == 0 rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: dataset folder not found (or not a directory); pass the folder that holds "
            "the .inter file and the *_feat.npy files."
        )
    inter_path = folder / (inter_file if inter_file is not None else f"{folder.name}.inter")
    parsed = read_interactions(inter_path)
    if parsed.users.size == 0:
        raise DatasetError(f"{inter_path}: no interaction rows below the header; the file is empty.")
    n_users, n_items = parsed.n_users, parsed.n_items
    if not (parsed.labels == 0).any():
        counts = {name: int((parsed.labels == k).sum()) for k, name in _SPLIT_NAMES.items()}
        raise DatasetError(
            f"{inter_path}: column 'x_label' has no row with value 0 (training split empty; rows "
            f"per split {counts}); mark the training interactions with x_label 0."
        )

    source = {"inter": os.path.abspath(inter_path)}
    loaded = {}
    for name, path in feature_paths(folder, features).items():
        loaded[name] = load_feature_file(name, path, n_items)
        source[name] = os.path.abspath(path)
    interactions = parsed.split_matrix(0)
    return TrainingData(n_users, n_items, interactions, loaded, source)


def feature_paths(folder: Path, features: Optional[Mapping[str, PathLike]]) -> dict:
    """Modality name -> feature file of a dataset folder: ``features`` (names -> files in ``folder``)
    or the :data:`DEFAULT_FEATURES` present (a warning names each one missing)."""
    if features is not None:
        if not isinstance(features, Mapping):
            raise DatasetError(
                f"{folder}: features must be a mapping modality name -> file, got "
                f"{type(features).__name__}; e.g. {{'image': 'image_feat.npy'}}."
            )
        if not features:
            raise DatasetError(
                f"{folder}: features mapping is empty; name at least one modality file, e.g. "
                "{'image': 'image_feat.npy'}."
            )
        paths = {}
        for name, file in features.items():
            if not isinstance(name, str) or not name:
                raise DatasetError(f"{folder}: modality name {name!r} must be a non-empty string.")
            path = folder / file
            if not path.is_file():
                raise DatasetError(
                    f"{path}: feature file for modality '{name}' not found; fix the path in the "
                    "features mapping or create the file."
                )
            paths[name] = path
        return paths
    paths = {name: folder / file for name, file in DEFAULT_FEATURES.items()}
    present = {name: p for name, p in paths.items() if p.is_file()}
    if not present:
        looked = ", ".join(str(p) for p in paths.values())
        raise DatasetError(
            f"{folder}: no feature file found (looked for {looked}); add at least one modality "
            "or pass features={'name': 'file.npy'}."
        )
    for name, p in paths.items():
        if name not in present:
            warnings.warn(
                f"{p}: modality '{name}' not found, continuing with {list(present)} only.",
                stacklevel=3,
            )
    return present


#: :meth:`TrainingData.from_arrays` as a function.
training_data_from_arrays = TrainingData.from_arrays
