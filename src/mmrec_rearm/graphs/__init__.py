"""The four homogeneous graphs of REARM and their fusions (paper Sec. 4.2), as pure functions.

Inputs are the training interactions ``(n_users, n_items)`` (any non-zero entry is one
interaction) and one ``(n_items, d_m)`` feature array per modality. Every output is a scipy CSR
matrix, float32, rows = node ids in order, canonical (sorted column indices, no duplicates):

* co-occurrence graphs (eq. 1 + softmax): :func:`cooccurrence_topk` (module ``cooccurrence``).
  Users are linked by the number of training items they share, items by the number of training
  users they share; each row keeps its ``k`` largest counts and weighs them by a softmax over
  those counts.
* semantic / interest graphs (eq. 2 + degree normalisation): :func:`cosine_knn` for items (raw
  item features, module ``knn``) and :func:`user_interest_knn` for users (the mean of the user's
  training items' features, Sec. 4.1; module ``interest``). Each row keeps its ``k`` most
  cosine-similar nodes (itself included by default) with weight ``cosine / k``, which is
  ``D^-1/2 S D^-1/2`` for the 0/1 degree ``D = k``.
* fusions (Sec. 4.2.2 and 4.2.3): :func:`fuse_graphs`, a weighted sum (module ``build``).

:func:`build_graphs` wires them under a :class:`GraphParams` (module ``params``) into
:class:`HomogeneousGraphs`.

Memory grows with the interactions and with ``n * k``, never with ``n^2``: similarities are
computed a block of columns at a time and reduced to their top-k at once (exact float32, no
approximate search). The user interest graph has two exact routes, chosen by estimated cost
(:func:`choose_user_route`); the item semantic graph of the same modality reuses the item Gram
matrix when the user graph takes the ``"gram"`` route. docs/choices.md ("Graphs") lists every
point where we differ from the official code.

:data:`BUILDER_VERSION` names the builders' output: the graph cache keys on it instead of on
the source text, so a refactor or a comment keeps every stored graph valid, while a change of
output must come with a new version (tests/test_graph_version.py pins the output of each version).

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

from .build import FeatureInput, build_graphs, fuse_graphs
from .cooccurrence import COOC_CANDIDATES, cooccurrence_counts_topk, cooccurrence_topk, popular_nodes
from .inputs import empty_graph
from .interest import choose_user_route, user_interest_features, user_interest_knn
from .knn import cosine_knn
from .params import GraphParams, HomogeneousGraphs

__all__ = [
    "BUILDER_VERSION",
    "GraphParams",
    "HomogeneousGraphs",
    "build_graphs",
    "cooccurrence_topk",
    "cooccurrence_counts_topk",
    "cosine_knn",
    "user_interest_knn",
    "user_interest_features",
    "fuse_graphs",
    "popular_nodes",
    "empty_graph",
    "choose_user_route",
    "COOC_CANDIDATES",
    "FeatureInput",
]

#: Version of the builders' output. Bump it whenever any graph that :func:`build_graphs` returns
#: can differ for the same inputs (a new rule, a fixed bug, a different tie order), and record the
#: new golden digest in tests/test_graph_version.py in the same commit. Never bump it for a change
#: that keeps every output bit-identical: stored graphs stay valid across such releases.
BUILDER_VERSION = 1
