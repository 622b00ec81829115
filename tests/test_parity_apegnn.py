"""Parity of our ApeGNN with the authors' code (github THUDM/ApeGNN), on a real TikTok window.

Runs when a clone is found at ``$APEGNN_OFFICIAL_SRC`` (default ``~/ApeGNN``); the authors'
``ApeGNN_HT``, ``ApeGNN_APPNP`` and ``utils.data_loader`` are imported from it at run time
(tests/official_code.py). Checked, for both kernels and several depths / poolings:

* the normalised interaction graph and the initial locality ``t`` of every node equal the authors'
  ``build_sparse_graph`` / ``GraphConv`` construction;
* with the authors' weights (moved off their initial values) copied into our model through
  :data:`KEY_MAP` and both models given the same graph, in float64: full-sort scores of 100+ users
  (including those without training items) and both loss terms of a fixed batch of 256 triples.
  Message and edge dropout are off, as in every command the authors publish.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm.baselines.apegnn import ApeGNN  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.layers import normalized_interaction_graph  # noqa: E402

from official_code import default_places, import_from_clone, require_clone  # noqa: E402
from parity_support import (check_differences, eval_users, fixed_batch, perturb, scaled_difference,  # noqa: E402
                            tiktok_subset, training_pairs)

ENV = "APEGNN_OFFICIAL_SRC"
HOWTO = f"git clone https://github.com/THUDM/ApeGNN ~/ApeGNN (or set {ENV} to a clone)"

#: the authors' state_dict key -> ours
KEY_MAP = {
    "user_embed": "user_embedding",
    "item_embed": "item_embedding",
    "gcn.user_t": "user_t",
    "gcn.item_t": "item_t",
}

CASES = [("heat", "sum", 2), ("ppr", "sum", 3), ("heat", "mean", 3), ("ppr", "concat", 1)]


@pytest.fixture(scope="module")
def authors():
    folder = require_clone(ENV, default_places("ApeGNN"), ["ApeGNN_HT.py", "ApeGNN_APPNP.py", "utils/data_loader.py"], HOWTO)
    return import_from_clone(folder, ["ApeGNN_HT", "ApeGNN_APPNP", "utils.data_loader"],
                             top_level=["ApeGNN_HT", "ApeGNN_APPNP", "utils"])


@pytest.fixture(scope="module")
def subset():
    return tiktok_subset()


@pytest.fixture(scope="module")
def authors_graph(authors, subset):
    """(normalised adjacency as scipy COO, degrees (N, 1)) from the authors' builder."""
    loader = authors.utils_data_loader
    loader.n_users, loader.n_items = subset.n_users, subset.n_items  # the builder reads module globals
    users, items = training_pairs(subset)
    norm, in_degree, _ = loader.build_sparse_graph(np.stack([users, items], axis=1))
    return norm, in_degree


def args(kernel_pool_layers, reg_weight=1e-3):
    _, pool, layers = kernel_pool_layers
    return argparse.Namespace(e=1e-7, l2=reg_weight, dim=64, context_hops=layers, mess_dropout=False,
                              mess_dropout_rate=0.1, edge_dropout=False, edge_dropout_rate=0.1, pool=pool,
                              n_negs=1, ns="rns", K=1, heatkernel=False, cuda=False, t_u=2, t_i=2)


def build_ours(subset, case, reg_weight=1e-3) -> ApeGNN:
    kernel, pool, layers = case
    users, items = training_pairs(subset)
    config = {"device": "cpu", "embedding_size": 64, "n_layers": layers, "kernel": kernel, "pool": pool,
              "reg_weight": reg_weight, "is_multimodal_model": False}
    return ApeGNN(config, ArrayDataLoader(users, items, subset.n_users, subset.n_items))


def test_graph_and_initial_locality_match(authors, subset, authors_graph):
    norm, in_degree = authors_graph
    ours = normalized_interaction_graph(sp.csr_matrix((np.ones(len(training_pairs(subset)[0])), training_pairs(subset)),
                                                      shape=(subset.n_users, subset.n_items)))
    assert abs(ours.astype(np.float64) - sp.csr_matrix(norm)).max() < 1e-7
    model = build_ours(subset, CASES[0])
    theirs = authors.ApeGNN_HT.HeatKernel({"n_users": subset.n_users, "n_items": subset.n_items},
                                          args(CASES[0]), norm, in_degree)
    assert scaled_difference(model.user_t, theirs.gcn.user_t) < 1e-7
    assert scaled_difference(model.item_t, theirs.gcn.item_t) < 1e-7


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_scores_and_losses_match_in_float64(authors, subset, authors_graph, case, record_property):
    norm, in_degree = authors_graph
    kernel = case[0]
    module = authors.ApeGNN_HT if kernel == "heat" else authors.ApeGNN_APPNP
    cls = module.HeatKernel if kernel == "heat" else module.APPNP
    theirs = cls({"n_users": subset.n_users, "n_items": subset.n_items}, args(case), norm, in_degree).double()
    ours = build_ours(subset, case).double()
    # one graph for both (equality with the authors' builder is checked above)
    coo = normalized_interaction_graph(ours.interactions).tocoo()
    theirs.gcn.interact_mat = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data.astype(np.float64),
                                                      coo.shape).coalesce()
    perturb([theirs.user_embed, theirs.item_embed], seed=1, scale=0.05)
    perturb([theirs.gcn.user_t, theirs.gcn.item_t], seed=2, scale=0.1)
    state = theirs.state_dict()
    assert set(state) == set(KEY_MAP), f"unmapped authors' keys: {set(state) ^ set(KEY_MAP)}"
    ours.load_state_dict({KEY_MAP[key]: value for key, value in state.items()}, strict=True)
    ours.eval()
    theirs.eval()

    users = eval_users(subset)
    with torch.no_grad():
        user_rep, item_rep = theirs.generate()
        expected_scores = theirs.rating(user_rep[users], item_rep)
        scores = ours.full_sort_predict((users,))
        u, p, n = fixed_batch(subset)
        _, expected_bpr, expected_reg = theirs({"users": u, "pos_items": p, "neg_items": n.unsqueeze(1)})
        bpr, reg = ours.calculate_loss(torch.stack([u, p, n]))
    found = {"scores": scaled_difference(scores, expected_scores), "bpr": scaled_difference(bpr, expected_bpr),
             "reg": scaled_difference(reg, expected_reg)}
    check_differences(f"ApeGNN {case}", found, record_property)
    assert float(expected_reg) > 1e-4  # the regulariser is large enough for a wrong term to show
