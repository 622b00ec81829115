"""Parameters of the graph builders (:class:`GraphParams`) and their result (:class:`HomogeneousGraphs`).

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ..errors import GraphParamError

__all__ = ["GraphParams", "HomogeneousGraphs", "PADDINGS", "EMPTIES", "SIDES", "is_int", "is_real"]

#: Allowed values of ``GraphParams.cooc_padding``, ``cooc_empty`` and of a graph's side.
PADDINGS = ("duplicate", "none")
EMPTIES = ("popular", "self", "none")
SIDES = ("user", "item")


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    return is_int(value) or (isinstance(value, (float, np.floating)) and not isinstance(value, bool))


@dataclass(frozen=True)
class GraphParams:
    """Parameters of the homogeneous graphs; the defaults are REARM's Baby settings.

    Validated on construction (:class:`~mmrec_rearm.errors.GraphParamError` naming the field, the
    value and the allowed range); numbers are normalised (``1`` -> ``1.0`` for weights, lists ->
    tuples) so that equal settings give equal :meth:`to_dict` output and cache keys. Limits that
    depend on the data (``k`` below the node count, one explicit weight per modality) are checked
    by :func:`build_graphs`.
    """

    user_knn_k: int = 40      # k of the user co-occurrence AND user interest graphs
    item_knn_k: int = 10      # k of the item co-occurrence AND item semantic graphs
    u_mm_image_weight: float = 0.2   # weight of the FIRST modality in the user interest graph
    i_mm_image_weight: float = 0.0   # weight of the FIRST modality in the item semantic graph
    uu_co_weight: float = 0.4        # user homogeneous = w * co-occurrence + (1 - w) * interest
    ii_co_weight: float = 0.2        # item homogeneous = w * co-occurrence + (1 - w) * semantic
    u_modal_weights: Optional[Tuple[float, ...]] = None   # explicit per-modality weights, sum 1
    i_modal_weights: Optional[Tuple[float, ...]] = None
    cooc_padding: str = "duplicate"  # rows with 0 < neighbours < k: "duplicate" | "none"
    cooc_empty: str = "popular"      # rows without co-occurring neighbour: "popular" | "self" | "none"
    knn_self: bool = True            # the node itself is one of its k most similar nodes
    seed: int = 0                    # duplicate padding draws

    def __post_init__(self) -> None:
        for name in ("user_knn_k", "item_knn_k"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be an integer >= 1 (the number of "
                    "neighbours kept per node).")
            object.__setattr__(self, name, int(value))
        if not is_int(self.seed) or self.seed < 0:
            raise GraphParamError(f"GraphParams.seed={self.seed!r}: must be an integer >= 0.")
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("u_mm_image_weight", "i_mm_image_weight", "uu_co_weight", "ii_co_weight"):
            value = getattr(self, name)
            if not is_real(value) or not (0.0 <= float(value) <= 1.0):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be a number in [0, 1].")
            object.__setattr__(self, name, float(value))
        for name in ("u_modal_weights", "i_modal_weights"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be None or a sequence of numbers "
                    "(one weight per modality, in modality order, summing to 1).")
            weights = tuple(value)
            if not weights or not all(is_real(w) and 0.0 <= float(w) <= 1.0 for w in weights):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: every weight must be a number in [0, 1] and "
                    "at least one must be given.")
            weights = tuple(float(w) for w in weights)
            if abs(math.fsum(weights) - 1.0) > 1e-6:
                raise GraphParamError(
                    f"GraphParams.{name}={weights!r}: the weights sum to {math.fsum(weights):.6g}, "
                    "not 1; rescale them.")
            object.__setattr__(self, name, weights)
        if self.cooc_padding not in PADDINGS:
            raise GraphParamError(
                f"GraphParams.cooc_padding={self.cooc_padding!r}: must be one of {PADDINGS}.")
        if self.cooc_empty not in EMPTIES:
            raise GraphParamError(
                f"GraphParams.cooc_empty={self.cooc_empty!r}: must be one of {EMPTIES}.")
        if not isinstance(self.knn_self, (bool, np.bool_)):
            raise GraphParamError(f"GraphParams.knn_self={self.knn_self!r}: must be True or False.")
        object.__setattr__(self, "knn_self", bool(self.knn_self))

    def modal_weights(self, side: str, n_modalities: int) -> Tuple[float, ...]:
        """Fusion weight of each modality on ``side`` ("user" or "item"), summing to 1.

        Explicit ``u_modal_weights`` / ``i_modal_weights`` win (their length must be
        ``n_modalities``). Otherwise one modality gets 1; the first of several gets
        ``u_mm_image_weight`` / ``i_mm_image_weight`` and the others share the rest equally (with
        two modalities: ``(w, 1 - w)``, the official rule).
        """
        if side not in SIDES:
            raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
        if not is_int(n_modalities) or n_modalities < 0:
            raise GraphParamError(f"n_modalities={n_modalities!r}: must be an integer >= 0.")
        prefix = side[0]
        explicit = getattr(self, f"{prefix}_modal_weights")
        if explicit is not None:
            if len(explicit) != n_modalities:
                raise GraphParamError(
                    f"GraphParams.{prefix}_modal_weights={explicit!r} has {len(explicit)} weights "
                    f"but the data has {n_modalities} modalities; give one weight per modality.")
            return explicit
        if n_modalities == 0:
            return ()
        if n_modalities == 1:
            return (1.0,)
        first = getattr(self, f"{prefix}_mm_image_weight")
        rest = (1.0 - first) / (n_modalities - 1)
        return (first,) + (rest,) * (n_modalities - 1)

    def to_dict(self) -> dict:
        """Plain JSON-ready mapping (tuples as lists), the canonical form used in fingerprints."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> "GraphParams":
        """Build from a mapping of field names (e.g. a config section); unknown names are refused."""
        if not isinstance(mapping, Mapping):
            raise GraphParamError(f"graph parameters must be a mapping, got {type(mapping).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in mapping if k not in names)
        if unknown:
            raise GraphParamError(
                f"unknown graph parameter(s) {', '.join(unknown)}; valid names: {', '.join(names)}.")
        return cls(**dict(mapping))


@dataclass
class HomogeneousGraphs:
    """The homogeneous graphs of one dataset (scipy CSR float32, canonical).

    ``user_*``: ``(n_users, n_users)``; ``item_*``: ``(n_items, n_items)``. A graph whose fusion
    weight is 0 is an empty matrix of the right shape. ``seconds``: build time per graph name; the
    time of an item Gram shared by both sides is counted in ``user_interest``.
    """

    user_cooccurrence: sp.csr_matrix
    user_interest: sp.csr_matrix
    item_cooccurrence: sp.csr_matrix
    item_semantic: sp.csr_matrix
    user_homogeneous: sp.csr_matrix
    item_homogeneous: sp.csr_matrix
    seconds: Dict[str, float] = field(default_factory=dict)

    GRAPH_NAMES: ClassVar[Tuple[str, ...]] = (
        "user_cooccurrence", "user_interest", "item_cooccurrence", "item_semantic",
        "user_homogeneous", "item_homogeneous")
