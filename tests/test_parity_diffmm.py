"""Parity of our DiffMM with the authors' code (github HKUDS/DiffMM) on a real TikTok subset.

Runs when a clone of the authors' code is found: ``$DIFFMM_OFFICIAL_SRC``, else ``~/DiffMM-official``
or ``ext/DiffMM`` beside the repository (or one level up). Their modules (``Params``, ``Model``,
``Utils/Utils``, ``DataHandler``, ``Main``) are imported at run time; docs/testing.md lists the
shims their code needs here. Their epoch (``Coach.trainEpoch``) mixes data loading, shuffling and
printing; the harness calls the functions it is made of (``training_losses``, ``p_sample``,
``buildUIMatrix``, ``SpAdjDropEdge``, ``forward_MM``, ``forward_cl_MM``, ``contrastLoss``,
``reg_loss``) and composes them as ``trainEpoch`` does.

Data: TikTok users 4200..4799 with all their rows and the 1,591 items they touch, real image and
audio features (audio in the authors' "text" slot). Two settings: the authors' TikTok line
(linear feature transform, main-vs-modality contrast, edges kept with probability 0.5) and their
Baby line (matrix transform, modality-vs-modality contrast, all edges kept). Weights: theirs, moved
off their initial values by seeded noise, copied into ours (:func:`key_map`). Compared:

* the training graph and the generated graphs ``D^-1/2 (A + I) D^-1/2`` (values), the edge
  dropout (same seed -> same dropped edges, both draw in column-major order);
* the diffusion schedule; one denoiser training step with the same seed (same steps, noise and
  dropout draws): both loss terms per user and every denoiser weight after the Adam step; the
  reverse process and the items it picks per user (float32: the authors' step embedding is
  hard-coded float32 and does not run in float64);
* with the same generated graphs: full-sort scores of 200 users, the contrastive views, every loss
  term and every gradient for a batch of 256 triples, in float32 and float64.

Loss weights are raised (reg 0.1, cl 0.5, e_loss 0.5) so that each term lies far above the
tolerance. Run with -s to see the largest differences.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

import official_code as oc  # noqa: E402
import parity_support as ps  # noqa: E402

ENV = "DIFFMM_OFFICIAL_SRC"
DEFAULTS = oc.default_places("DiffMM-official", "DiffMM")
HOWTO = f"git clone https://github.com/HKUDS/DiffMM and set {ENV}=/path/to/the/clone"
BATCH = 256
SCORED_USERS = ps.SCORED_USERS  # every third user of the window, as in REARM's parity tests
REG, CL, E_LOSS, TEMP = 0.1, 0.5, 0.5, 0.5
PRECISIONS = {"float32": (torch.float32, 1e-5), "float64": (torch.float64, 1e-6)}


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    trans: int          # authors' --trans
    cl_method: int      # authors' --cl_method
    keep_rate: float    # authors' --keepRate


SETTINGS = (Setting("tiktok", 1, 1, 0.5), Setting("baby", 0, 0, 1.0))
OUR_TRANSFORM = {0: "matrix", 1: "linear"}
OUR_CL_MODE = {0: "modal", 1: "main"}


def key_map(setting: Setting) -> dict:
    """The authors' parameter name -> ours, for the recommender (``Model``)."""
    names = {"uEmbeds": "user_embedding", "iEmbeds": "item_embedding", "modal_weight": "modal_weight"}
    for m, theirs in enumerate(("image_trans", "text_trans")):
        if setting.trans == 0:
            names[theirs] = f"transforms.{m}.weight"
        else:
            names[f"{theirs}.weight"] = f"transforms.{m}.linear.weight"
            names[f"{theirs}.bias"] = f"transforms.{m}.linear.bias"
    return names


#: the authors' denoiser (``Denoise``) parameter name -> ours (``Denoiser``)
DENOISER_KEYS = {"emb_layer.weight": "step_proj.weight", "emb_layer.bias": "step_proj.bias",
                 "in_layers.0.weight": "encoder.0.weight", "in_layers.0.bias": "encoder.0.bias",
                 "out_layers.0.weight": "decoder.0.weight", "out_layers.0.bias": "decoder.0.bias"}


@pytest.fixture(scope="module")
def authors():
    folder = oc.require_clone(ENV, DEFAULTS, ["Model.py", "Main.py", "Params.py"], HOWTO, label="DIFFMM PARITY TESTS")
    return oc.import_from_clone(folder, ["Params", "Model", "Utils.Utils", "DataHandler", "Main"],
                             ["Params", "Model", "Utils", "DataHandler", "Main"])


@pytest.fixture(scope="module")
def subset():
    return ps.tiktok_subset()


@pytest.fixture(scope="module", params=SETTINGS, ids=lambda s: s.name)
def setting(request) -> Setting:
    return request.param


def configure(authors, subset, setting: Setting):
    args = authors.Params.args
    args.user, args.item, args.batch, args.latdim, args.gnn_layer = subset.n_users, subset.n_items, BATCH, 64, 1
    args.trans, args.cl_method, args.keepRate = setting.trans, setting.cl_method, setting.keep_rate
    args.reg, args.ssl_reg, args.e_loss, args.temp = REG, CL, E_LOSS, TEMP
    args.image_feat_dim = args.text_feat_dim = 128
    return args


@pytest.fixture(scope="module")
def sides(authors, subset, setting, tmp_path_factory):
    """(authors' namespace of objects, our model), float32, same perturbed weights."""
    from mmrec_rearm.baselines.diffmm import DiffMM
    from mmrec_rearm.host import ArrayDataLoader

    args = configure(authors, subset, setting)
    with oc.authors_runtime(), torch.random.fork_rng():
        torch.manual_seed(0)
        model = authors.Model.Model(torch.from_numpy(subset.features["image"].copy()),
                                    torch.from_numpy(subset.features["audio"].copy()))
        out_dims = [1000, subset.n_items]
        denoisers = [authors.Model.Denoise(out_dims[::-1], out_dims, args.d_emb_size, norm=args.norm)
                     for _ in range(2)]
        diffusion = authors.Model.GaussianDiffusion(args.noise_scale, args.noise_min, args.noise_max, args.steps)
    ps.perturb([p for _, p in sorted(model.named_parameters())], seed=7)
    for m, denoiser in enumerate(denoisers):
        ps.perturb([p for _, p in sorted(denoiser.named_parameters())], seed=11 + m, scale=0.01)

    folder = tmp_path_factory.mktemp(f"diffmm_{setting.name}")
    subset.write_features(folder / "tiktok_parity")
    train = subset.split == 0
    loader = ArrayDataLoader(subset.users[train], subset.items[train], subset.n_users, subset.n_items)
    config = dict(dataset="tiktok_parity", data_path=f"{folder}/", vision_feature_file="image_feat.npy",
                  text_feature_file="audio_feat.npy", train_batch_size=BATCH, reg_weight=REG, cl_weight=CL,
                  cl_temperature=TEMP, keep_rate=setting.keep_rate, e_loss_weight=E_LOSS, ris_lambda=args.ris_lambda,
                  feature_transform=OUR_TRANSFORM[setting.trans], cl_mode=OUR_CL_MODE[setting.cl_method])
    ours = DiffMM(config, loader)
    ours.load_state_dict({key_map(setting)[k]: v for k, v in model.state_dict().items()}, strict=True)
    for theirs, mine in zip(denoisers, ours.denoisers):
        mine.load_state_dict({DENOISER_KEYS[k]: v for k, v in theirs.state_dict().items()}, strict=True)
    theirs = dict(model=model, denoisers=denoisers, diffusion=diffusion, args=args)
    return theirs, ours


def test_training_graph_matches_authors(authors, subset, sides, record_property):
    from mmrec_rearm.model.layers import normalized_interaction_graph

    handler = object.__new__(authors.DataHandler.DataHandler)
    with oc.authors_runtime():
        theirs = ps.to_csr(handler.makeTorchAdj(sp.coo_matrix(subset.train)))
    difference = ps.max_difference(theirs, normalized_interaction_graph(subset.train, self_loops=True))
    assert difference <= 1e-7
    assert ps.max_difference(ps.graph_as_csr(sides[1].interaction_graph), theirs) <= 1e-7
    ps.report(record_property, "diffmm_training_graph_max_diff", difference)


def test_schedule_matches_authors(sides):
    theirs, ours = sides[0]["diffusion"], sides[1].diffusion
    for name, mine in (("alphas_cumprod", ours.alphas_cumprod), ("posterior_mean_coef1", ours.posterior_mean_coef1),
                       ("posterior_mean_coef2", ours.posterior_mean_coef2),
                       ("posterior_log_variance_clipped", ours.posterior_log_variance)):
        assert ps.max_difference(mine, getattr(theirs, name)) <= 1e-12, name  # float64 both


def test_denoiser_training_step_matches_authors(subset, sides, setting, record_property):
    """One step of every denoiser on 256 users' rows, same seed on both sides (the step draws,
    noise and dropout masks come out identical): per-user losses, then the weights after Adam."""
    theirs, ours = sides
    users = np.random.default_rng(5).choice(subset.n_users, BATCH, replace=False)
    x0 = torch.from_numpy(subset.train[users].toarray())
    their_opts = [torch.optim.Adam(d.parameters(), lr=theirs["args"].lr, weight_decay=0) for d in theirs["denoisers"]]
    with torch.no_grad():
        items = theirs["model"].getItemEmbeds().detach()
        feats = [theirs["model"].getImageFeats().detach(), theirs["model"].getTextFeats().detach()]
    torch.manual_seed(21)
    with oc.authors_runtime():
        for opt in their_opts:
            opt.zero_grad()
        terms = [theirs["diffusion"].training_losses(d, x0, items, None, f) for d, f in zip(theirs["denoisers"], feats)]
        loss = sum(elbo.mean() + condition.mean() * E_LOSS for elbo, condition in terms)
        loss.backward()
        for opt in their_opts:
            opt.step()
    torch.manual_seed(21)
    ours_terms = []
    for m, denoiser in enumerate(ours.denoisers):  # the per-user terms, same draws as the step below
        ours_terms.append(ours.diffusion.training_losses(denoiser, x0, ours.item_embedding.detach(),
                                                         ours.modal_item_features()[m].detach()))
    torch.manual_seed(21)
    per_modality = ours.diffusion_step(x0)
    worst = {}
    for m, ((elbo, condition), (our_elbo, our_condition)) in enumerate(zip(terms, ours_terms)):
        for name, a, b in (("elbo", our_elbo, elbo), ("condition", our_condition, condition)):
            worst[f"{name}{m}"] = (ps.scale_of(b), ps.max_difference(a, b))
            assert worst[f"{name}{m}"][1] <= 1e-5 * max(1.0, worst[f"{name}{m}"][0]), (name, m)
        expected = (elbo.mean() + condition.mean() * E_LOSS).item()
        assert abs(per_modality[m] - expected) <= 1e-5 * max(1.0, abs(expected))
    for theirs_d, mine in zip(theirs["denoisers"], ours.denoisers):
        state = mine.state_dict()
        for their_name, value in theirs_d.state_dict().items():
            difference = ps.max_difference(state[DENOISER_KEYS[their_name]], value)
            worst[f"after_step/{their_name}"] = difference
            assert difference <= 1e-6, their_name
    ps.report(record_property, f"diffmm_{setting.name}_denoiser_step", worst)


def test_generated_graphs_match_authors(authors, subset, sides, setting, record_property):
    """Reverse process for every user, the top item per user and the normalised, edge-dropped
    graph per modality (the dropout seeded identically on both sides)."""
    theirs, ours = sides
    args = theirs["args"]
    x0 = torch.from_numpy(subset.train.toarray())
    coach = object.__new__(authors.Main.Coach)
    expected, worst = [], {}
    with oc.authors_runtime(), torch.no_grad():
        for m, denoiser in enumerate(theirs["denoisers"]):
            denoised = theirs["diffusion"].p_sample(denoiser, x0, args.sampling_steps, args.sampling_noise)
            worst[f"denoised{m}"] = ps.max_difference(
                ours.diffusion.p_sample(ours.denoisers[m], x0, 0, False), denoised)
            top = torch.topk(denoised, k=args.rebuild_k)[1].numpy()
            expected.append((np.repeat(np.arange(subset.n_users), args.rebuild_k), top.ravel()))
        torch.manual_seed(9)
        graphs = [ps.to_csr(theirs["model"].edgeDropper(coach.buildUIMatrix(u, i, np.ones(len(u)))))
                  for u, i in expected]
    torch.manual_seed(9)
    ours.generate_graphs()
    for m, graph in enumerate(graphs):
        worst[f"graph{m}"] = ps.max_difference(ps.graph_as_csr(ours.modal_graphs[m]), graph)
        assert worst[f"graph{m}"] <= 1e-6
        assert worst[f"denoised{m}"] <= 1e-5
    if setting.keep_rate < 1:
        assert graphs[0].nnz < 0.75 * (3 * subset.n_users + subset.n_items)  # of 2 edges + 1 self-loop per user, 1 per item
    ps.report(record_property, f"diffmm_{setting.name}_generated_graphs", worst)


@pytest.fixture(params=list(PRECISIONS))
def precision(request) -> str:
    return request.param


def _in_precision(sides, precision):
    """The recommender pair in ``precision`` with the same generated graphs (ours), on copies."""
    import copy

    dtype = PRECISIONS[precision][0]
    theirs, ours = sides
    if ours.modal_graphs is None:
        ours.generate_graphs()
    model = copy.deepcopy(theirs["model"]).to(dtype)
    model.image_embedding = model.image_embedding.to(dtype)
    model.text_embedding = model.text_embedding.to(dtype)
    adj = ps.to_torch_sparse(ps.graph_as_csr(ours.interaction_graph), dtype)
    modal = [ps.to_torch_sparse(ps.graph_as_csr(g), dtype) for g in ours.modal_graphs]
    return model, ours.to(dtype), adj, modal


def test_scores_views_losses_and_gradients_match_authors(authors, subset, sides, setting, precision, record_property):
    model, ours, adj, modal = _in_precision(sides, precision)
    tol = PRECISIONS[precision][1]
    users, positives, negatives = ps.fixed_batch(subset, BATCH, 3, negatives="untrained")
    util = authors.Utils_Utils
    try:
        with oc.authors_runtime():
            u_all, i_all = model.forward_MM(adj, *modal)
            loss = {"bpr": -util.pairPredict(u_all[users], i_all[positives], i_all[negatives]).sigmoid().log().sum() / BATCH,
                    "reg": model.reg_loss() * REG}
            u1, i1, u2, i2 = model.forward_cl_MM(adj, *modal)
            if setting.cl_method == 0:
                cl = util.contrastLoss(u1, u2, users, TEMP) + util.contrastLoss(i1, i2, positives, TEMP)
            else:
                cl = (util.contrastLoss(u_all, u1, users, TEMP) + util.contrastLoss(i_all, i1, positives, TEMP)
                      + util.contrastLoss(u_all, u2, users, TEMP) + util.contrastLoss(i_all, i2, positives, TEMP))
            loss["cl"] = cl * CL
            sum(loss.values()).backward()
        expected_scores = (u_all[torch.as_tensor(SCORED_USERS)] @ i_all.T).detach()
        ours.train()
        ours.zero_grad(set_to_none=True)
        bpr, reg, cl = ours.calculate_loss(torch.stack((users, positives, negatives)))
        (bpr + reg + cl).backward()
        views = ours.modal_views()
        ours.eval()
        with torch.no_grad():
            got_scores = ours.full_sort_predict((torch.as_tensor(SCORED_USERS),))
        worst = {"scores": (ps.scale_of(expected_scores), ps.max_difference(got_scores, expected_scores))}
        assert worst["scores"][1] <= tol * max(1.0, worst["scores"][0])
        for m, view in enumerate(views):
            theirs_view = torch.cat([(u1, u2)[m], (i1, i2)[m]])
            worst[f"view{m}"] = ps.max_difference(view, theirs_view)
            assert worst[f"view{m}"] <= tol * max(1.0, ps.scale_of(theirs_view))
        for name, got in (("bpr", bpr), ("reg", reg), ("cl", cl)):
            worst[name] = (got.item(), abs(got.item() - loss[name].item()))
            assert worst[name][1] <= tol * max(1.0, abs(loss[name].item())), name
        grads = dict(ours.named_parameters())
        for their_name, parameter in model.named_parameters():
            mine = grads[key_map(setting)[their_name]].grad
            worst[f"grad/{their_name}"] = (ps.scale_of(parameter.grad), ps.max_difference(mine, parameter.grad))
            assert worst[f"grad/{their_name}"][1] <= tol * max(worst[f"grad/{their_name}"][0], 1e-3), their_name
        ps.report(record_property, f"diffmm_{setting.name}_{precision}_recommender", worst)
    finally:
        ours.to(torch.float32)
