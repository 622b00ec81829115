"""Parity of our MGDN with the authors' MGDCF code (github CrawlScript/Torch-MGDCF, PyTorch), on a
real TikTok window.

Runs when a clone is found at ``$MGDCF_OFFICIAL_SRC`` (default ``~/Torch-MGDCF``);
``torch_mgdcf.layers.mgdcf`` and ``torch_mgdcf.losses`` are imported from it at run time, with the
plain-torch DGL stand-in of tests/official_shims when DGL is not installed (docs/testing.md).
``main_mgdcf.py`` keeps its model state in a bare ``embeddings`` tensor and spells the training
loss inline, so this test builds that tensor and restates those two lines with the authors' loss
functions. Checked:

* the authors' ``build_homo_graph`` + ``norm_adj`` (bipartite graph, reverse edges, self-loops,
  ``D^-1/2 (A + I) D^-1/2``) equal our ``normalized_interaction_graph(self_loops=True)``;
* float64, dropout off (the authors' three rates set to 0; our dropouts are the same functions),
  both models on the authors' graph: full-sort scores for 100+ users and the summed InfoBPR and the
  L2 term of a fixed batch, with the authors' own uniform negative draw replayed from one seed,
  for several (K, alpha, beta, number of negatives).
"""
from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm.baselines.mgdn import MGDN  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.layers import normalized_interaction_graph  # noqa: E402

from official_code import default_places, import_from_clone, require_clone  # noqa: E402
from parity_support import (as_matrix, check_differences, eval_users, fixed_batch, float64_graph,  # noqa: E402
                            perturb, scaled_difference, tiktok_subset, training_pairs)

ENV = "MGDCF_OFFICIAL_SRC"
HOWTO = f"git clone https://github.com/CrawlScript/Torch-MGDCF ~/Torch-MGDCF (or set {ENV} to a clone)"

#: the authors' ``embeddings`` (N, d) tensor of main_mgdcf.py -> our parameters (row ranges)
KEY_MAP = {"embeddings[:n_users]": "user_embedding", "embeddings[n_users:]": "item_embedding"}

CASES = [dict(k=4, alpha=0.1, beta=0.9, num_negs=300), dict(k=2, alpha=0.3, beta=0.5, num_negs=5),
         dict(k=0, alpha=0.1, beta=0.9, num_negs=1)]


@pytest.fixture(scope="module")
def authors():
    folder = require_clone(ENV, default_places("Torch-MGDCF"), ["torch_mgdcf/layers/mgdcf.py", "torch_mgdcf/losses.py"], HOWTO)
    return import_from_clone(folder, ["torch_mgdcf.layers.mgdcf", "torch_mgdcf.losses"], top_level=["torch_mgdcf"])


@pytest.fixture(scope="module")
def subset():
    return tiktok_subset()


@pytest.fixture(scope="module")
def authors_graph(authors, subset):
    """The authors' graph with its float64 edge weights."""
    users, items = training_pairs(subset)
    cls = authors.torch_mgdcf_layers_mgdcf.MGDCF
    graph = cls.build_homo_graph(np.stack([users, items], axis=1), num_users=subset.n_users, num_items=subset.n_items)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the weights are computed in the default float type
    try:
        cls.norm_adj(graph)
    finally:
        torch.set_default_dtype(default)
    return graph


def test_graph_matches(subset, authors_graph):
    users, items = training_pairs(subset)
    ours = normalized_interaction_graph(sp.csr_matrix((np.ones(len(users)), (users, items)),
                                                      shape=(subset.n_users, subset.n_items)), self_loops=True)
    theirs = as_matrix(authors_graph)
    assert theirs.nnz == ours.nnz == 2 * len(users) + subset.n_users + subset.n_items
    assert abs(ours.astype(np.float64) - theirs).max() < 1e-7


@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{k}-a{alpha}-b{beta}-m{num_negs}".format(**c))
def test_scores_and_losses_match_in_float64(authors, subset, authors_graph, case, record_property):
    n_users, n_items = subset.n_users, subset.n_items
    users, items = training_pairs(subset)
    config = {"device": "cpu", "embedding_size": 64, "n_layers": case["k"], "mgdcf_alpha": case["alpha"],
              "mgdcf_beta": case["beta"], "num_negs": case["num_negs"], "l2_coef": 1e-2,
              "x_drop_rate": 0.0, "edge_drop_rate": 0.0, "z_drop_rate": 0.0, "is_multimodal_model": False}
    ours = MGDN(config, ArrayDataLoader(users, items, n_users, n_items)).double()
    ours.interaction_graph = float64_graph(as_matrix(authors_graph))
    layer = authors.torch_mgdcf_layers_mgdcf.MGDCF(k=case["k"], alpha=case["alpha"], beta=case["beta"],
                                                   x_drop_rate=0.0, edge_drop_rate=0.0, z_drop_rate=0.0)
    losses = authors.torch_mgdcf_losses
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(n_users + n_items, 64, generator=generator, dtype=torch.float64) / 8.0
    perturb([embeddings], seed=4)
    ours.load_state_dict({"user_embedding": embeddings[:n_users], "item_embedding": embeddings[n_users:]}, strict=True)
    ours.eval()
    layer.eval()

    def authors_forward():
        h = layer(authors_graph, embeddings)
        return h[:n_users], h[n_users:]

    u, p, _ = fixed_batch(subset)
    with torch.no_grad():
        user_h, item_h = authors_forward()
        expected_scores = user_h[eval_users(subset)] @ item_h.t()
        torch.manual_seed(11)
        expected_ranking = losses.compute_info_bpr_loss(user_h, item_h, torch.stack([u, p], dim=1),
                                                        num_negs=case["num_negs"], reduction="none").sum()
        expected_l2 = losses.compute_l2_loss([user_h, item_h]) * config["l2_coef"]
        torch.manual_seed(11)  # the same draw as inside compute_info_bpr_loss
        negatives = torch.randint(0, n_items, [len(u), case["num_negs"]])
        scores = ours.full_sort_predict((eval_users(subset),))
        ranking, l2 = ours.loss_terms(u, p, negatives)
    found = {"scores": scaled_difference(scores, expected_scores), "info_bpr": scaled_difference(ranking, expected_ranking),
             "l2": scaled_difference(l2, expected_l2)}
    check_differences(f"MGDN {case}", found, record_property)
