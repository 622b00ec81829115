"""Parity of our MIGGT with the authors' MIG-GT code (github CrawlScript/MIG-GT), on a real TikTok
window with its real 128-d image and audio features (audio in the text slot, as MMRec is set up).

Runs when a clone is found at ``$MIGGT_OFFICIAL_SRC`` (default ``~/MIG-GT``); ``mig_gt.layers.mirf_gt``
(the model), ``mig_gt.layers.mgdcf``, ``mig_gt.layers.sign`` (the random projection) and
``mig_gt.losses`` are imported from it at run time, with the plain-torch DGL / torch_scatter
stand-ins of tests/official_shims when those packages are not installed (docs/testing.md). The
training loss of ``main.py`` is written inline there (not a function), so this test restates its
three terms with the authors' loss functions and the authors' model outputs. Checked:

* the authors' ``build_sorted_homo_graph`` + ``norm_adj`` equal our graph with self-loops, and
  the authors' ``random_project`` equals ours under the same seed;
* float64, every dropout rate 0, the authors' weights and batch-norm statistics (moved off their
  initial values) copied into our model through :func:`key_map`, both on the authors' graph: in
  eval mode the full-sort scores of 100+ users; in training mode (batch statistics) the InfoBPR,
  L2 and transformer-unsmooth terms of a fixed batch. The uniform draws (the transformer's item
  samples, the authors' negatives) are replayed from one seed on both sides.
"""
from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mmrec_rearm.baselines.miggt import MIGGT, random_projection  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.layers import normalized_interaction_graph  # noqa: E402

from official_code import default_places, import_from_clone, require_clone  # noqa: E402
from parity_support import (as_matrix, check_differences, eval_users, fixed_batch, float64_graph,  # noqa: E402
                            perturb, scaled_difference, tiktok_subset, training_pairs)

ENV = "MIGGT_OFFICIAL_SRC"
HOWTO = f"git clone https://github.com/CrawlScript/MIG-GT ~/MIG-GT (or set {ENV} to a clone)"
#: parts of the authors' MIGGT module that its forward never uses (not in our model)
UNUSED = ("emb_transformer.", "t_transformer.", "v_transformer.", "t_memory", "v_memory", "z_memory")

CASES = [dict(k_e=4, k_t=2, k_v=1, hidden=512, num_samples=10, num_negs=1, use_item_emb=False),
         dict(k_e=2, k_t=2, k_v=0, hidden=64, num_samples=20, num_negs=3, use_item_emb=True)]


def key_map(authors_key: str):
    """The authors' state_dict key -> ours (None for the unused parts)."""
    if authors_key.startswith(UNUSED):
        return None
    for theirs, ours in (("t_ff.0.model.", "text_encoder."), ("v_ff.0.model.", "image_encoder."),
                         ("z_transformer.q_linear.", "global_query."), ("z_transformer.k_linear.", "global_key.")):
        if authors_key.startswith(theirs):
            key = ours + authors_key[len(theirs):]
            return key[:-len(".alpha")] + ".weight" if key.endswith(".alpha") else key  # PReLU slope
    raise KeyError(f"no mapping for the authors' key {authors_key!r}")


@pytest.fixture(scope="module")
def authors():
    folder = require_clone(ENV, default_places("MIG-GT"), ["mig_gt/layers/mirf_gt.py", "mig_gt/layers/mgdcf.py"], HOWTO)
    return import_from_clone(folder, ["mig_gt.layers.mirf_gt", "mig_gt.layers.mgdcf", "mig_gt.layers.sign",
                                      "mig_gt.losses"], top_level=["mig_gt"])


@pytest.fixture(scope="module")
def subset():
    return tiktok_subset()


@pytest.fixture(scope="module")
def feature_config(subset, tmp_path_factory) -> dict:
    """MMRec keys that make the model (its stand-in base) load the window's features."""
    folder = tmp_path_factory.mktemp("miggt_parity") / "tiktok_window"
    folder.mkdir()
    np.save(folder / "image_feat.npy", subset.features["image"])
    np.save(folder / "audio_feat.npy", subset.features["audio"])
    return {"data_path": f"{folder.parent}/", "dataset": folder.name, "vision_feature_file": "image_feat.npy",
            "text_feature_file": "audio_feat.npy"}


@pytest.fixture(scope="module")
def authors_graph(authors, subset):
    users, items = training_pairs(subset)
    return authors.mig_gt_layers_mgdcf.MGDCF.build_sorted_homo_graph(
        np.stack([users, items], axis=1), num_users=subset.n_users, num_items=subset.n_items)


class Float64Default:
    """The authors compute edge weights in torch's default float type: make it float64."""

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def test_graph_and_projection_match(authors, subset, authors_graph):
    with Float64Default():
        authors.mig_gt_layers_mgdcf.MGDCF.norm_adj(authors_graph)
    users, items = training_pairs(subset)
    ours = normalized_interaction_graph(sp.csr_matrix((np.ones(len(users)), (users, items)),
                                                      shape=(subset.n_users, subset.n_items)), self_loops=True)
    assert abs(ours.astype(np.float64) - as_matrix(authors_graph)).max() < 1e-7
    image = torch.from_numpy(subset.features["image"])
    torch.manual_seed(5)
    expected = authors.mig_gt_layers_sign.random_project(image, 128)
    torch.manual_seed(5)
    assert scaled_difference(random_projection(image, 128), expected) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=lambda c: "ke{k_e}-kt{k_t}-kv{k_v}-C{num_samples}-m{num_negs}".format(**c))
def test_scores_and_losses_match_in_float64(authors, subset, authors_graph, feature_config, case,
                                            record_property):
    n_users, n_items, d = subset.n_users, subset.n_items, 64
    users, items = training_pairs(subset)
    rates = dict(input_feat_drop_rate=0.0, feat_drop_rate=0.0, user_x_drop_rate=0.0, item_x_drop_rate=0.0,
                 edge_drop_rate=0.0, z_drop_rate=0.0)
    theirs = authors.mig_gt_layers_mirf_gt.MIGGT(
        k_e=case["k_e"], k_t=case["k_t"], k_v=case["k_v"], alpha=0.1, beta=0.9, user_in_channels=d,
        item_v_in_channels=128, item_v_hidden_channels_list=[case["hidden"], d], item_t_in_channels=128,
        item_t_hidden_channels_list=[case["hidden"], d], bn=True, num_clusters=5,
        num_samples=case["num_samples"], **rates).double()
    config = {"device": "cpu", **feature_config, "embedding_size": d, "feat_hidden_units": case["hidden"],
              "k_e": case["k_e"], "k_t": case["k_t"], "k_v": case["k_v"], "mgdcf_alpha": 0.1, "mgdcf_beta": 0.9,
              "l2_coef": 1e-2, "num_samples": case["num_samples"], "num_negs": case["num_negs"],
              "use_rp": False, "use_item_emb": case["use_item_emb"], "is_multimodal_model": True, **rates}
    ours = MIGGT(config, ArrayDataLoader(users, items, n_users, n_items)).double()
    with Float64Default():
        authors.mig_gt_layers_mgdcf.MGDCF.norm_adj(authors_graph)
    ours.interaction_graph = float64_graph(as_matrix(authors_graph))

    generator = torch.Generator().manual_seed(6)
    user_embeddings = torch.randn(n_users, d, generator=generator, dtype=torch.float64) / 8.0
    item_embeddings = torch.randn(n_items, d, generator=generator, dtype=torch.float64) / 8.0
    torch.manual_seed(7)
    image = authors.mig_gt_layers_sign.random_project(torch.from_numpy(subset.features["image"]), 128).double()
    text = torch.from_numpy(subset.features["audio"]).double()
    perturb(list(theirs.parameters()) + [b for name, b in theirs.named_buffers() if "running" in name], seed=8)
    state = {}
    for key, value in theirs.state_dict().items():
        if key_map(key) is not None:
            state[key_map(key)] = value
    state.update(user_embedding=user_embeddings, image_features=image, text_features=text)
    if case["use_item_emb"]:
        state["item_embedding"] = item_embeddings
    ours.load_state_dict(state, strict=True)

    def authors_forward():
        with Float64Default():
            out = theirs(authors_graph, user_embeddings, image, text, return_all=True,
                         item_embeddings=item_embeddings if case["use_item_emb"] else None)
        combined, z_memory = out[0], out[-1]
        return combined[:n_users], combined[n_users:], z_memory

    found = {}
    with torch.no_grad():
        theirs.eval()
        ours.eval()
        watched = eval_users(subset)
        torch.manual_seed(21)
        user_h, item_h, _ = authors_forward()
        torch.manual_seed(21)
        found["scores"] = scaled_difference(ours.full_sort_predict((watched,)), user_h[watched] @ item_h.t())

        theirs.train()
        ours.train()
        u, p, _ = fixed_batch(subset)
        torch.manual_seed(31)
        user_h, item_h, z_memory = authors_forward()
        losses = authors.mig_gt_losses
        edges = torch.stack([u, p], dim=1)
        expected_ranking = losses.compute_info_bpr_loss(user_h, item_h, edges, num_negs=case["num_negs"],
                                                        reduction="none").sum()
        expected_l2 = losses.compute_l2_loss([user_h, item_h]) * config["l2_coef"]
        # main.py's third term, restated: the user against the rows of its item's transformer input
        logits = (user_h[u].unsqueeze(1) @ z_memory[p + n_users].permute(0, 2, 1)).squeeze(1)
        expected_unsmooth = F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long), reduction="none").sum()
        torch.manual_seed(31)  # replay: the transformer's samples, then the authors' negatives
        torch.randint(0, n_items, [n_users + n_items, case["num_samples"]])
        negatives = torch.randint(0, n_items, [len(u), case["num_negs"]])
        torch.manual_seed(31)
        ranking, l2, unsmooth = ours.loss_terms(u, p, negatives)
    found.update(info_bpr=scaled_difference(ranking, expected_ranking), l2=scaled_difference(l2, expected_l2),
                 unsmooth=scaled_difference(unsmooth, expected_unsmooth))
    check_differences(f"MIGGT {case}", found, record_property)
