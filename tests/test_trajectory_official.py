"""Training trajectories: ours through MMRec's own Trainer against the official REARM training loop,
from the same weights on the same graphs, step by step.

Runs when a clone of the official code is found (like tests/test_parity_official.py; see
docs/testing.md) and a checkout of MMRec (its ``common.trainer`` is imported in isolation, nothing
is written there). Two subsets: 300 consecutive Baby users (about 1,500 items) with seeded random
features of Baby's widths (4096-d image, 384-d text), and the 600 TikTok users of the parity tests
with their real 128-d image and audio features; the Baby preset (our default for TikTok too). The
Baby subset is half the parity tests' one because its features are trainable parameters of 4096 +
384 columns per item and per user, which make Adam's step and the backward pass the cost of the
test; the trajectory checks do not depend on the number of rows.

For each, the official model is built and its weights perturbed (official_harness), loaded into
ours with ``load_official_state_dict``; both use our homogeneous graphs. Then the same 20 batches of
256 (user, positive, negative) triples, 10 per epoch over 2 epochs, train:

* ours: MMRec's ``Trainer`` builds the optimiser (``_build_optimizer``: Adam, ``weight_decay`` 0) and
  its ``LambdaLR``; each epoch is ``Trainer._train_epoch`` itself, followed by
  ``lr_scheduler.step()`` as ``Trainer.fit`` does; the decoupled decay is our model's, with the lr of
  the optimiser MMRec built;
* official: ``AdamW(weight_decay=reg_weight)`` and ``LambdaLR`` as the official ``main.py`` builds
  them, and its training step (``zero_grad``, ``loss``, ``backward``, ``step``).

After every step every parameter must agree within 1e-8 (largest absolute difference) in float64,
and so must the loss; the float32 drift is reported (test properties, and printed with ``-s``, with
the three parameters that drifted most, and the difference of the eval-mode scores after training)
and only checked loosely: in float32 the attention biases whose true gradient is 0 (the output
bias, cancelled by the LayerNorm after it, and the key bias, cancelled by the softmax) get float32
noise as a gradient, which Adam turns into steps of about lr each, in a different direction on
each side. Two training configurations, both in float64: the defaults our TikTok runs use
(Baby preset loss weights, lr 5e-5, constant schedule; also run in float32) and a stressed one
(lr 1e-4 halved every epoch, contrastive / orthogonal weights 0.5 / 2.0, weight decay 0.05) in which
a wrong learning rate, loss weight or decay moves the parameters by 1e-6 or more per step.
Why not a larger learning rate: Adam divides by ``sqrt(v) + eps`` (eps 1e-8), so a parameter whose
true gradient is 0 (the attention output biases, which the following LayerNorm cancels) moves by
about ``lr * roundoff / eps`` per step, in a direction set by float64 roundoff (gradients of 1e-13)
that differs between two correct implementations: about 1e-8 per step at lr 1e-3, 1e-9 at 1e-4.

Dropout: the attention dropout draws of two implementations cannot be matched (different random
streams and kernels), so both models train in train mode with attention dropout rates 0 (official
``s_drop`` / ``m_drop``, our ``self_attn_dropout`` / ``cross_attn_dropout``). Dropout itself is
checked separately against ``nn.MultiheadAttention`` (tests/test_layers.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import locate_mmrec_checkout  # noqa: E402
from mmrec_rearm.model.presets import PRESETS  # noqa: E402
from official_harness import (  # noqa: E402
    BABY, BABY_DEFAULT, BABY_ENV, BABY_RANDOM_FEATURES, USER_WINDOW, MMRecConfig, data_folder_or_skip, read_subset, as_float64, build_official, build_official_model, graph_as_csr,
    import_mmrec_trainer, our_config, training_batch, write_mmrec_features, write_official_dataset)

STEP_TOL = 1e-8          # float64: largest absolute parameter difference after any step
FLOAT32_SANITY = 1e-3    # float32: the drift is reported; this only catches a broken run
BATCHES_PER_EPOCH, EPOCHS, BATCH_SIZE = 10, 2, 256
#: the Baby users of the trajectory runs: the first half of the parity tests' window
BABY_WINDOW = (USER_WINDOW[0], USER_WINDOW[0] + 300)


@dataclasses.dataclass(frozen=True)
class Training:
    name: str
    learning_rate: float
    scheduler: tuple
    cl_loss_weight: float
    ort_loss_weight: float
    reg_weight: float


# REARM.yaml's learning rate, MMRec's default schedule, the Baby preset's loss and decay weights
DEFAULT = Training("default", 5e-5, (1.0, 50), PRESETS["baby"]["cl_loss_weight"],
                   PRESETS["baby"]["ort_loss_weight"], PRESETS["baby"]["reg_weight"])
STRESSED = Training("stressed", 1e-4, (0.5, 1), 0.5, 2.0, 0.05)
#: (subset, training, precision): the defaults on both subsets in both precisions; the stressed
#: training, whose checks (lr, loss weights, decay) do not depend on the data, on TikTok in float64
RUNS = [("baby", DEFAULT, "float64"), ("baby", DEFAULT, "float32"), ("tiktok", DEFAULT, "float64"),
        ("tiktok", STRESSED, "float64"), ("tiktok", DEFAULT, "float32")]
#: the Baby runs are tested here, the TikTok ones in tests/test_trajectory_official_tiktok.py (two files,
#: so that the test workers, which take whole files, can run them at the same time)
BABY_RUNS = [run for run in RUNS if run[0] == "baby"]
TIKTOK_RUNS = [run for run in RUNS if run[0] == "tiktok"]


@pytest.fixture(scope="module")
def mmrec():
    checkout, why = locate_mmrec_checkout()
    if checkout is None:
        pytest.skip(f"TRAJECTORY TESTS SKIPPED: {why}")
    return import_mmrec_trainer(checkout / "src")


@pytest.fixture(scope="module")
def case(request, official, tmp_path_factory):
    """(name, subset, official dataset side, official work folder, folder with our feature files,
    the batches) for the subset named by the test's parameter, built once per module."""
    name = request.param
    if name == "baby":
        folder = data_folder_or_skip(BABY_ENV, BABY_DEFAULT, "Baby", ("baby.inter",))
        subset = read_subset(folder, "baby", window=BABY_WINDOW, random_features=BABY_RANDOM_FEATURES)
    else:
        subset = request.getfixturevalue(f"{name}_subset")
    workdir = tmp_path_factory.mktemp(f"official_{name}")
    write_official_dataset(subset, workdir)
    side = build_official(official, BABY, workdir)
    data_root = tmp_path_factory.mktemp(f"ours_{name}")
    write_mmrec_features(subset, data_root)
    batches = [training_batch(subset, BATCH_SIZE, seed=100 + n) for n in range(EPOCHS * BATCHES_PER_EPOCH)]
    return name, subset, side, workdir, data_root, batches


def build_pair(official, case, training: Training, embedding: int = 64):
    """(official, ours) with the same perturbed weights on our graphs, attention dropout 0."""
    from mmrec_rearm.host import ArrayDataLoader
    from mmrec_rearm.model.rearm import REARM
    from mmrec_rearm.official import load_official_state_dict

    _, subset, side, workdir, data_root, _ = case
    train = subset.split == 0
    loader = ArrayDataLoader(subset.users[train], subset.items[train], subset.n_users, subset.n_items)
    config = our_config(BABY, data_root, tuple(subset.features), self_attn_dropout=0.0, cross_attn_dropout=0.0,
                        cl_loss_weight=training.cl_loss_weight, ort_loss_weight=training.ort_loss_weight,
                        reg_weight=training.reg_weight, learning_rate=training.learning_rate,
                        learning_rate_scheduler=list(training.scheduler), embedding_size=embedding)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ours = REARM(config, loader)
    graphs = {"user_homogeneous": graph_as_csr(ours.user_graph), "item_homogeneous": graph_as_csr(ours.item_graph)}
    theirs = build_official_model(official, BABY, side, graphs, workdir, s_drop=0.0, m_drop=0.0, embedding_dim=embedding,
                                  cl_loss_weight=training.cl_loss_weight,
                                  diff_loss_weight=training.ort_loss_weight, reg_weight=training.reg_weight)
    load_official_state_dict(ours, theirs.state_dict())
    return theirs, ours


def mmrec_trainer(mmrec, model, training: Training):
    """MMRec's own Trainer for `model`: its optimiser and LambdaLR from overall.yaml + our keys."""
    config = MMRecConfig(mmrec.overall)
    config.update(learning_rate=training.learning_rate, learning_rate_scheduler=list(training.scheduler),
                  weight_decay=0.0, learner="adam", device=torch.device("cpu"), model="REARM",
                  dataset="trajectory", epochs=EPOCHS)
    return mmrec.Trainer(config, model)


def official_optimiser(model, training: Training):
    """AdamW and LambdaLR as the official main.py builds them."""
    optimizer = torch.optim.AdamW(model.parameters(), training.learning_rate, weight_decay=training.reg_weight)
    factor, step = training.scheduler
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: factor ** (epoch / step))


def official_step(model, optimizer, batch, n_users: int) -> float:
    """One official training step (its trainer.py): items offset by n_users, (B, 2) pairs."""
    users, positives, negatives = batch
    optimizer.zero_grad()
    total = model.loss(torch.stack((users, users), dim=1),
                       torch.stack((positives, negatives), dim=1) + n_users)[0]
    total.backward()
    optimizer.step()
    return float(total.detach())


def differences(theirs, ours) -> dict:
    """Largest absolute difference per parameter, under the official names."""
    from mmrec_rearm.official import to_official_state_dict

    mine = to_official_state_dict(ours)
    official = dict(theirs.named_parameters())
    assert set(mine) == set(official)
    return {k: float((mine[k].detach() - official[k].detach()).abs().max()) for k in official}


def largest_difference(theirs, ours) -> float:
    return max(differences(theirs, ours).values())


def train_both(mmrec, pair, batches, training: Training, n_users: int) -> dict:
    """Both sides over `batches` in lockstep -> per step: parameter difference, both losses, lrs."""
    theirs, ours = pair
    trainer = mmrec_trainer(mmrec, ours, training)
    optimizer, scheduler = official_optimiser(theirs, training)
    assert type(trainer.optimizer) is torch.optim.Adam and trainer.optimizer.defaults["weight_decay"] == 0
    theirs.train()
    start = {name: p.detach().clone() for name, p in theirs.named_parameters()}
    log = {"difference": [], "official_loss": [], "our_loss": [], "lr": []}

    def lockstep(epoch_batches):
        # ours takes a batch, steps, then asks for the next one: the official step for that batch
        # runs just before it is handed over, the comparison just after ours has stepped
        for batch in epoch_batches:
            log["official_loss"].append(official_step(theirs, optimizer, batch, n_users))
            log["lr"].append((trainer.optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["lr"]))
            yield torch.stack(batch)
            log["difference"].append(largest_difference(theirs, ours))

    for epoch in range(EPOCHS):
        epoch_batches = batches[epoch * BATCHES_PER_EPOCH:(epoch + 1) * BATCHES_PER_EPOCH]
        ours.pre_epoch_processing()
        _, losses = trainer._train_epoch(lockstep(epoch_batches), epoch)
        log["our_loss"] += [float(loss) for loss in losses]
        trainer.lr_scheduler.step()  # as Trainer.fit, after each training epoch
        scheduler.step()  # as the official main.py
    log["moved"] = max(float((p.detach() - start[name]).abs().max()) for name, p in theirs.named_parameters())
    final = differences(theirs, ours)
    log["worst_parameters"] = {k: float(f"{final[k]:.3g}") for k in sorted(final, key=final.get)[-3:]}
    # what the drift does to the function: eval-mode scores of every 5th user after training
    users = torch.arange(0, n_users, 5)
    with torch.no_grad():
        expected = theirs.eval().full_sort_predict([users])
        got = ours.eval().full_sort_predict((users,))
    log["score_difference"] = float((got - expected).abs().max())
    log["largest_score"] = float(expected.abs().max())
    return log


@pytest.mark.parametrize("case, training, precision", BABY_RUNS,
                         ids=[f"{n}-{t.name}-{p}" for n, t, p in BABY_RUNS], indirect=["case"])
def test_training_trajectory_matches_official(case, training, precision, mmrec, official, record_property):
    check_trajectory(case, training, precision, mmrec, official, record_property)


def check_trajectory(case, training, precision, mmrec, official, record_property) -> None:
    """The runs of one RUNS entry in lockstep and every check of the module docstring."""
    name, subset, batches = case[0], case[1], case[-1]
    pair = build_pair(official, case, training)
    if precision == "float64":
        pair = as_float64(pair)
    assert largest_difference(*pair) == 0.0  # the same start
    log = train_both(mmrec, pair, batches, training, subset.n_users)

    steps = len(log["difference"])
    assert steps == len(batches) == len(log["our_loss"]) >= 20
    expected_lr = [training.learning_rate * training.scheduler[0] ** ((n // BATCHES_PER_EPOCH) / training.scheduler[1])
                   for n in range(steps)]
    np.testing.assert_allclose(np.array(log["lr"]), np.array([expected_lr, expected_lr]).T, rtol=1e-12)
    loss_gap = max(abs(a - b) for a, b in zip(log["official_loss"], log["our_loss"]))
    worst = max(log["difference"])
    label = f"{name}_{training.name}_{precision}"
    for key, value in ((f"{label}_max_param_diff_per_step", [float(f"{d:.3g}") for d in log["difference"]]),
                       (f"{label}_max_param_diff", worst), (f"{label}_max_loss_diff", loss_gap),
                       (f"{label}_largest_parameter_change", log["moved"]),
                       (f"{label}_worst_parameters_at_the_end", log["worst_parameters"]),
                       (f"{label}_final_score_diff", log["score_difference"]),
                       (f"{label}_largest_final_score", log["largest_score"])):
        print(f"[trajectory] {key} = {value}")
        record_property(key, value)
    assert log["moved"] > 100 * STEP_TOL  # training moved the parameters far beyond the tolerance
    if precision == "float64":
        assert worst <= STEP_TOL, log["difference"]
        assert loss_gap <= STEP_TOL
        assert log["score_difference"] <= STEP_TOL * max(1.0, log["largest_score"])
    else:
        assert worst <= FLOAT32_SANITY, log["difference"]
