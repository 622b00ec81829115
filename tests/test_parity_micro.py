"""Parity of our MICRO with the authors' code (github CRIPAC-DIG/MICRO) on a real TikTok subset.

Runs when a clone of the authors' code is found: ``$MICRO_OFFICIAL_SRC``, else ``~/MICRO-official``
or ``ext/MICRO`` beside the repository (or one level up). Their modules (``codes/Models.py``,
``codes/main.py`` for the BPR term, ``codes/utility/load_data.py`` for the user-item graph) are
imported at run time; docs/testing.md lists the shims their code needs here.

Data: TikTok users 4200..4799 with all their rows and the 1,591 items they touch, real 128-d image
and audio features (audio in the authors' "text" slot). Both models get the same weights (theirs,
moved off their initial values by seeded noise, copied into ours through :data:`KEY_MAP`) and the
same fixed item graphs (ours, after checking them against theirs). Compared, in float32 and float64:

* the user-item graph ``D^-1 (A + I)`` and the raw-feature kNN graphs ``O_m`` (tie-aware);
* the learned graphs built at the first batch of an epoch, the full-sort scores of 200 users;
* every loss term and every parameter's gradient for a first batch (the learned graph is rebuilt
  and differentiated) and a second batch (the epoch's graph, detached), 256 triples each.

The contrastive and regularisation weights are raised (0.5 and 0.1 instead of 0.03 and 1e-5) so
that each term lies far above the tolerance. Run with -s to see the largest differences.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

import official_code as oc  # noqa: E402
import parity_support as ps  # noqa: E402

ENV = "MICRO_OFFICIAL_SRC"
DEFAULTS = oc.default_places("MICRO-official", "MICRO")
HOWTO = f"git clone https://github.com/CRIPAC-DIG/MICRO and set {ENV}=/path/to/the/clone"
BATCH = 256
SCORED_USERS = ps.SCORED_USERS  # every third user of the window, as in REARM's parity tests
CL_WEIGHT, REG_WEIGHT, KNN_K, LAMBDA = 0.5, 0.1, 10, 0.9
TIE_TOL = 1e-6

#: the authors' parameter name -> ours
KEY_MAP = {
    "user_embedding.weight": "user_embedding.weight",
    "item_id_embedding.weight": "item_embedding.weight",
    "image_embedding.weight": "raw_features.0",
    "text_embedding.weight": "raw_features.1",
    "image_trs.weight": "feature_proj.0.weight",
    "image_trs.bias": "feature_proj.0.bias",
    "text_trs.weight": "feature_proj.1.weight",
    "text_trs.bias": "feature_proj.1.bias",
    "query.0.weight": "fusion_query.0.weight",
    "query.0.bias": "fusion_query.0.bias",
    "query.2.weight": "fusion_query.2.weight",
}
PRECISIONS = {"float32": (torch.float32, 1e-5), "float64": (torch.float64, 1e-6)}


@pytest.fixture(scope="module")
def authors():
    folder = oc.require_clone(ENV, DEFAULTS, ["codes/Models.py", "codes/utility/norm.py"], HOWTO, label="MICRO PARITY TESTS")
    # main.py star-imports utility.batch_test, which loads a dataset from disk at import time
    stub = types.ModuleType("utility.batch_test")
    return oc.import_from_clone(folder / "codes", ["Models", "main", "utility.load_data"],
                             ["utility", "Models", "main"], {"utility.batch_test": stub})


@pytest.fixture(scope="module")
def subset():
    return ps.tiktok_subset()


@pytest.fixture(scope="module")
def their_ui_graph(authors, subset, tmp_path_factory) -> sp.csr_matrix:
    """The authors' ``norm_adj`` from their loader, fed with the subset as train/val/test.json."""
    root = tmp_path_factory.mktemp("micro_authors") / "subset"
    core = root / "5-core"
    core.mkdir(parents=True)
    for code, name in enumerate(("train", "val", "test")):
        keep = subset.split == code
        rows = {}
        for user, item in zip(subset.users[keep], subset.items[keep]):
            rows.setdefault(str(int(user)), []).append(int(item))
        (core / f"{name}.json").write_text(json.dumps(rows))
    with oc.authors_runtime():
        data = authors.utility_load_data.Data(str(root), BATCH)
        assert (data.n_users, data.n_items) == (subset.n_users, subset.n_items)
        return sp.csr_matrix(data.get_adj_mat()[1], dtype=np.float64)


def build_pair(authors, subset, folder: Path, dtype):
    """(theirs, ours, their original graphs): same perturbed weights, same fixed item graphs."""
    args = authors.Models.args
    args.topk, args.lambda_coeff, args.layers, args.cf_model = KNN_K, LAMBDA, 1, "lightgcn"
    args.sparse, args.norm_type, args.embed_size = 1, "sym", 64
    with oc.authors_runtime(), torch.random.fork_rng():
        torch.manual_seed(0)
        # copies: their Embedding.from_pretrained(torch.Tensor(array)) shares the array's memory,
        # and the perturbation below would otherwise change the subset's features in place
        theirs = authors.Models.MICRO(subset.n_users, subset.n_items, 64, [64, 64], [0.1, 0.1],
                                      subset.features["image"].copy(), subset.features["audio"].copy())
    originals = {"image": ps.to_csr(theirs.image_original_adj), "audio": ps.to_csr(theirs.text_original_adj)}
    ps.perturb([p for _, p in sorted(theirs.named_parameters())], seed=7)  # also breaks the duplicated audio vectors

    from mmrec_rearm.baselines.micro import MICRO
    from mmrec_rearm.host import ArrayDataLoader

    subset.write_features(folder / "tiktok_parity")
    train = subset.split == 0
    loader = ArrayDataLoader(subset.users[train], subset.items[train], subset.n_users, subset.n_items)
    config = dict(dataset="tiktok_parity", data_path=f"{folder}/", vision_feature_file="image_feat.npy",
                  text_feature_file="audio_feat.npy", micro_cache_dir=False, train_batch_size=BATCH,
                  knn_k=KNN_K, lambda_coeff=LAMBDA, cl_weight=CL_WEIGHT, reg_weight=REG_WEIGHT)
    ours = MICRO(config, loader)
    state = {KEY_MAP[name]: value for name, value in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    theirs.image_original_adj = ps.to_torch_sparse(ours.original_graphs[0], dtype)
    theirs.text_original_adj = ps.to_torch_sparse(ours.original_graphs[1], dtype)
    theirs, ours = theirs.to(dtype), ours.to(dtype)
    ours.own_neighbours = ours._neighbours
    ours._neighbours = lambda z: their_neighbours(authors, z)
    return theirs, ours, originals


def their_neighbours(authors, z: torch.Tensor):
    """The authors' choice of the learned graph's edges (their ``build_sim`` + ``torch.topk``, in
    z's dtype) as (rows, cols). Given to our model in place of its own search: within float32
    rounding of the k-th similarity (near-ties occur in most rows-sets of this size) the two
    searches may pick different, equally valid neighbours, which would change every downstream
    number; test_our_learned_neighbours_are_a_valid_top_k checks our search separately."""
    with torch.no_grad():
        _, index = torch.topk(authors.Models.build_sim(z.detach()), KNN_K, dim=-1)
    rows = torch.arange(z.shape[0]).repeat_interleave(KNN_K)
    return rows, index.reshape(-1)


@pytest.fixture(scope="module", params=list(PRECISIONS))
def precision(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pair(authors, subset, precision, tmp_path_factory):
    return build_pair(authors, subset, tmp_path_factory.mktemp("micro_ours"), PRECISIONS[precision][0])


def tolerance(precision: str, scale: float) -> float:
    return PRECISIONS[precision][1] * max(1.0, scale)


def test_user_item_graph_matches_authors(pair, their_ui_graph, record_property):
    difference = ps.max_difference(ps.graph_as_csr(pair[1].interaction_graph), their_ui_graph)
    ps.report(record_property, "micro_ui_graph_max_diff", difference)
    assert difference <= 1e-6


def _similarities_of(values: torch.Tensor) -> np.ndarray:
    """Cosine similarities of the rows as the authors compute them (float32 torch)."""
    with torch.no_grad():
        unit = values.float() / values.float().norm(dim=1, keepdim=True)
        return (unit @ unit.T).double().numpy()


def _tied_rows(sims: np.ndarray) -> np.ndarray:
    """Rows whose k-th largest similarity is within TIE_TOL of the next: their top-k is not unique
    (float32 rounding of the two implementations may pick either)."""
    ranked = -np.sort(-sims, axis=1)
    return np.flatnonzero(np.abs(ranked[:, KNN_K - 1] - ranked[:, KNN_K]) <= TIE_TOL)


@pytest.mark.parametrize("position, name", [(0, "image"), (1, "audio")])
def test_raw_feature_knn_graphs_match_authors(pair, subset, position, name, record_property):
    """Same neighbours and values on every row whose top-k is unique. On a row where the k-th
    similarity ties with the next (within 1e-6) either choice is right: ours must be a valid
    top-k of the authors' similarities there (its values then differ through the neighbours'
    degrees)."""
    ours, theirs = pair[1].original_graphs[position].astype(np.float64), pair[2][name]
    sims = _similarities_of(torch.from_numpy(subset.features[name]))
    ranked = -np.sort(-sims, axis=1)
    tied = _tied_rows(sims)
    clean = np.setdiff1d(np.arange(subset.n_items), tied)
    difference = ps.max_difference(ours[clean], theirs[clean])
    invalid = [i for i in tied if len(ours[i].indices) != KNN_K
               or sims[i, ours[i].indices].min() < ranked[i, KNN_K - 1] - TIE_TOL]
    ps.report(record_property, f"micro_{name}_knn", {"tied_rows": len(tied), "max_diff": difference})
    assert len(clean) > 0.9 * subset.n_items
    assert difference <= 1e-6
    assert not invalid, f"rows {invalid}: not a top-{KNN_K} of the authors' similarities"


def test_our_learned_neighbours_are_a_valid_top_k(pair, record_property):
    """Our own search (graphs.cosine_knn, float32) on the projected features picks, in every row,
    a top-k of the authors' similarities, counting values within 1e-6 of the k-th as ties."""
    theirs, ours, _ = pair
    worst = {}
    for name, trs, emb in (("image", theirs.image_trs, theirs.image_embedding),
                           ("audio", theirs.text_trs, theirs.text_embedding)):
        z = trs(emb.weight).detach()
        sims = _similarities_of(z)
        kth = -np.sort(-sims, axis=1)[:, KNN_K - 1]
        rows, cols = (t.numpy() for t in ours.own_neighbours(z))
        shortfall = kth[rows] - sims[rows, cols]
        worst[name] = (len(_tied_rows(sims)), float(shortfall.max()))
        assert np.bincount(rows, minlength=z.shape[0]).tolist() == [KNN_K] * z.shape[0]
        assert shortfall.max() <= TIE_TOL
    ps.report(record_property, "micro_learned_knn_tied_rows_and_worst_shortfall", worst)


def test_learned_graphs_and_scores_match_authors(pair, their_ui_graph, precision, record_property):
    theirs, ours, _ = pair
    adj = ps.to_torch_sparse(their_ui_graph, theirs.user_embedding.weight.dtype)
    with oc.authors_runtime(), torch.no_grad():
        users, items, *_ = theirs(adj, build_item_graph=True)
        expected = (users[torch.as_tensor(SCORED_USERS)] @ items.T).double().numpy()
    ours.eval()
    with torch.no_grad():
        got = ours.full_sort_predict((torch.as_tensor(SCORED_USERS),)).double().numpy()
    graph_diff = max(ps.max_difference(ps.graph_as_csr(ours._mixed[0]), ps.to_csr(theirs.image_adj)),
                     ps.max_difference(ps.graph_as_csr(ours._mixed[1]), ps.to_csr(theirs.text_adj)))
    difference = ps.max_difference(got, expected)
    ps.report(record_property, f"micro_{precision}_learned_graph_max_diff", graph_diff)
    ps.report(record_property, f"micro_{precision}_score_max_diff", (difference, ps.scale_of(expected)))
    assert graph_diff <= PRECISIONS[precision][1]
    assert difference <= tolerance(precision, ps.scale_of(expected))


def _their_terms(authors, theirs, adj, batch, rebuild: bool) -> dict:
    users, positives, negatives = batch
    with oc.authors_runtime():
        u_all, i_all, image_view, text_view, fused = theirs(adj, build_item_graph=rebuild)
        trainer = types.SimpleNamespace(batch_size=BATCH, decay=REG_WEIGHT)
        bpr, emb, _ = authors.main.Trainer.bpr_loss(trainer, u_all[users], i_all[positives], i_all[negatives])
        cl = (theirs.batched_contrastive_loss(image_view, fused)
              + theirs.batched_contrastive_loss(text_view, fused)) * CL_WEIGHT
    return {"bpr": bpr, "reg": emb, "cl": cl}


def _gradients(model) -> dict:
    return {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for name, p in model.named_parameters()}


def test_losses_and_gradients_match_authors(authors, pair, their_ui_graph, subset, precision, record_property):
    """First batch of an epoch (graph rebuilt and differentiated), then a second batch (graph
    reused, detached): every loss term and every gradient."""
    theirs, ours, _ = pair
    adj = ps.to_torch_sparse(their_ui_graph, theirs.user_embedding.weight.dtype)
    ours.train()
    ours.pre_epoch_processing()
    worst = {}
    for step, (seed, rebuild) in enumerate(((3, True), (4, False))):
        batch = ps.fixed_batch(subset, BATCH, seed, negatives="untrained")
        theirs.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
        expected = _their_terms(authors, theirs, adj, batch, rebuild)
        sum(expected.values()).backward()
        bpr, reg, cl = ours.calculate_loss(torch.stack(batch))
        (bpr + reg + cl).backward()
        got = {"bpr": bpr.item(), "reg": reg.item(), "cl": cl.item()}
        for name, value in expected.items():
            diff = abs(got[name] - value.item())
            worst[f"step{step}_{name}"] = (got[name], diff)
            assert diff <= tolerance(precision, abs(value.item())), (step, name, got[name], value.item())
        their_grads, our_grads = _gradients(theirs), _gradients(ours)
        for their_name, our_name in KEY_MAP.items():
            scale = ps.scale_of(their_grads[their_name])
            diff = ps.max_difference(our_grads[our_name], their_grads[their_name])
            worst[f"step{step}_grad_{our_name}"] = (scale, diff)
            assert diff <= PRECISIONS[precision][1] * max(scale, 1e-3), (step, our_name, scale, diff)
        if not rebuild:  # the detached graph passes no gradient to the features or projections
            assert ps.scale_of(our_grads["raw_features.0"]) == 0 == ps.scale_of(their_grads["image_embedding.weight"])
        else:
            assert ps.scale_of(our_grads["raw_features.0"]) > 0
    ps.report(record_property, f"micro_{precision}_loss_and_grad", worst)
