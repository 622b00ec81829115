"""REARM's loss terms (paper eq. 12, 17, 21, 22) as pure functions of tensors."""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "info_nce", "orthogonal_loss", "pairwise_sum", "l2_penalty"]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Eq. (21), averaged over the batch: ``mean(-ln sigmoid(y_ui - y_ui'))``.

    ``pos_scores``, ``neg_scores``: (b,) -> 0-d tensor. ``logsigmoid`` is exact and does not overflow
    for any score gap (``softplus`` switches to the linear approximation above a gap of 20, an
    error of up to e^-20 per triple).
    """
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. (12): InfoNCE between two views of the same r nodes, averaged over the r rows.

    ``view1``, ``view2``: (r, c). Row i of ``view2`` is the positive of row i of ``view1``; every row
    of ``view2`` is in the denominator (the paper's sum over i'). Similarity is the cosine divided
    by ``temperature`` -> 0-d tensor. (The official code sums exponentials directly; logsumexp gives
    the same value without overflow for small temperatures.)
    """
    a = F.normalize(view1, p=2, dim=1)
    b = F.normalize(view2, p=2, dim=1)
    logits = (a @ b.t()) / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def orthogonal_loss(x1: torch.Tensor, x2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (17), soft orthogonality between two modal features of the same rows.

    ``x1``, ``x2``: (r, c). As in the official code: each column is zero-meaned over the rows,
    each row divided by its L2 norm (norm detached from the graph, plus ``eps``), then the MEAN of
    the squared entries of ``x1^T x2`` (c, c) (the paper writes the squared Frobenius norm, a sum;
    the mean differs by the constant factor c^2, absorbed by the loss weight) -> 0-d tensor.
    """
    def centred_unit_rows(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=0, keepdim=True)
        return x / (x.norm(p=2, dim=1, keepdim=True).detach() + eps)

    return (centred_unit_rows(x1).t() @ centred_unit_rows(x2)).pow(2).mean()


def pairwise_sum(views: Sequence[torch.Tensor], term) -> torch.Tensor:
    """``sum over modality pairs (m < m')`` of ``term(views[m], views[m'])``; 0 for one modality.

    With two modalities this is the single term the paper writes; more modalities add every pair.
    """
    if len(views) < 2:
        return views[0].new_zeros(())
    return sum(term(a, b) for a, b in combinations(views, 2))


def l2_penalty(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The ``||Theta||_2^2`` of eq. (22): sum of squared entries of all given parameters -> 0-d."""
    total = None
    for p in parameters:
        term = p.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("l2_penalty got no parameters")
    return total
