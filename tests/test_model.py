"""The REARM model on the stand-in host (no MMRec): construction, settings, training, evaluation
caching, switches, official state_dict mapping. Tiny synthetic data; CPU."""
from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmrec_rearm import host  # noqa: E402
from mmrec_rearm.errors import CheckpointError, ConfigError, DatasetError  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model import decay, presets  # noqa: E402
from mmrec_rearm.model.rearm import REARM, RawTable  # noqa: E402
from mmrec_rearm.official import (  # noqa: E402
    load_official_state_dict, official_key_map, to_official_state_dict)
from mmrec_rearm.synth import generate_demo  # noqa: E402

SMALL = dict(embedding_size=8, rank=2, n_layers=2, learning_rate=1e-2, user_knn_k=10, item_knn_k=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Demo:
    """A tiny dataset folder (MMRec layout for the features) plus the training pairs."""

    def __init__(self, root: Path, name: str = "demo", extra_user: bool = False):
        demo = generate_demo(n_users=40, n_items=29, seed=0, image_dim=16, text_dim=12, per_user=(8, 12))
        self.root, self.name = root, name
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for modality, arr in demo.features.items():
            np.save(folder / f"{modality}_feat.npy", arr)
        train = demo.labels == 0
        self.users, self.items = demo.users[train], demo.items[train]
        self.n_users = int(demo.users.max()) + 1 + int(extra_user)  # the extra user has no training row
        self.n_items = int(demo.items.max()) + 1
        self.eval_users = np.unique(demo.users[demo.labels > 0])

    def loader(self) -> ArrayDataLoader:
        return ArrayDataLoader(self.users, self.items, self.n_users, self.n_items)

    def config(self, **overrides) -> dict:
        cfg = dict(dataset=self.name, data_path=str(self.root) + "/", vision_feature_file="image_feat.npy",
                   text_feature_file="text_feat.npy", rearm_cache_dir=False, **SMALL)
        cfg.update(overrides)
        return cfg

    def model(self, **overrides) -> REARM:
        torch.manual_seed(0)
        return REARM(self.config(**overrides), self.loader())

    def batch(self, seed: int = 0, size: int = 64) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(self.users), size)
        neg = rng.integers(0, self.n_items, size)
        return torch.tensor(np.stack([self.users[rows], self.items[rows], neg]))


@pytest.fixture
def demo(tmp_path) -> Demo:
    return Demo(tmp_path)


def finite(terms) -> bool:
    return all(bool(torch.isfinite(t)) for t in terms)


# --------------------------------------------------------------------------------------------
# host and package


def test_package_import_does_not_import_torch():
    code = ("import sys, mmrec_rearm; assert 'torch' not in sys.modules; "
            "assert 'REARM' in dir(mmrec_rearm); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    import mmrec_rearm
    assert mmrec_rearm.REARM is REARM
    assert mmrec_rearm.load_official_state_dict is load_official_state_dict


def test_stand_in_base_sets_the_mmrec_contract(demo):
    if host.USING_MMREC:
        pytest.skip("MMRec's common package is importable here; the stand-in is not in use")
    assert host.BaseRecommender is host.StandInRecommender
    model = demo.model()
    assert isinstance(model, host.StandInRecommender)
    assert (model.n_users, model.n_items) == (demo.n_users, demo.n_items)
    assert model.USER_ID == "userID" and model.NEG_ITEM_ID == "neg__itemID"
    assert model.device == torch.device("cpu")
    assert model.v_feat.shape == (demo.n_items, 16) and model.t_feat.shape == (demo.n_items, 12)
    assert model.modality_names == ("image_feat", "text_feat")
    assert "Trainable parameters:" in str(model)


def test_missing_features_are_a_named_error(demo):
    with pytest.raises(DatasetError, match=r"feature file\(s\) not found: .*nope\.npy \(vision_feature_file\); "
                                           r".*nope2\.npy \(text_feature_file\)"):
        demo.model(vision_feature_file="nope.npy", text_feature_file="nope2.npy")
    with pytest.raises(DatasetError, match="names no feature file"):
        demo.model(vision_feature_file="", text_feature_file=None)


def test_an_empty_slot_leaves_one_modality(demo):
    model = demo.model(vision_feature_file="")        # a dataset with one modality names no vision file
    assert model.modality_names == ("text_feat",) and model.n_modalities == 1


# --------------------------------------------------------------------------------------------
# shapes, training, evaluation


def test_representation_shapes_and_predict(demo):
    model = demo.model().eval()
    users, items = model()
    d = SMALL["embedding_size"]
    assert users.shape == (demo.n_users, 3 * d) and items.shape == (demo.n_items, 3 * d)
    batch_users = torch.tensor([0, 3, 5])
    scores = model.full_sort_predict([batch_users, None])
    assert scores.shape == (3, demo.n_items)
    pairs = model.predict(torch.tensor([[0, 3], [1, 2]]))
    torch.testing.assert_close(pairs, scores[[0, 1], [1, 2]])


def test_training_steps_give_finite_decreasing_loss(demo):
    model = demo.model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = demo.batch(size=256)
    totals = []
    model.train()
    for _ in range(12):
        optimizer.zero_grad()
        terms = model.calculate_loss(batch)
        assert len(terms) == 4 and finite(terms)
        sum(terms).backward()
        optimizer.step()
        totals.append(float(sum(terms).detach()))
    assert np.mean(totals[-3:]) < totals[0]


def test_users_without_training_items_give_finite_loss_and_scores(tmp_path):
    demo = Demo(tmp_path, extra_user=True)
    model = demo.model()
    ghost = demo.n_users - 1
    assert not model.user_raw[0].weight[ghost].any()  # mean over no items: zeros, not NaN
    batch = demo.batch()
    batch[0, :4] = ghost  # even if such a user lands in a batch
    terms = model.calculate_loss(batch)
    assert finite(terms)
    sum(terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    assert torch.isfinite(model.full_sort_predict([torch.tensor([ghost, 0])])).all()


def test_full_sort_predict_computes_representations_once_per_evaluation(demo):
    model = demo.model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sum(model.calculate_loss(demo.batch())).backward()
    start = model.representation_passes
    with torch.no_grad():
        for split in range(2):  # MMRec: valid then test, each evaluate() starting with eval()
            model.eval()
            for chunk in np.array_split(demo.eval_users, 4):
                model.full_sort_predict([torch.from_numpy(chunk), None])
    assert model.representation_passes == start + 1
    assert all(p.grad is None for p in model.parameters())  # released for the evaluation

    model.train()  # MMRec's next epoch
    assert model._eval_cache is None
    optimizer.zero_grad()
    sum(model.calculate_loss(demo.batch())).backward()
    optimizer.step()
    model.eval()
    before = model.full_sort_predict([torch.tensor([0, 1]), None])
    with torch.no_grad():  # parameters changed in place without train(): detected by version
        model.user_id.weight.add_(1.0)
    after = model.full_sort_predict([torch.tensor([0, 1]), None])
    assert not torch.allclose(before, after)
    passes = model.representation_passes
    model.calculate_loss(demo.batch())  # a loss computation also drops the cache
    assert model._eval_cache is None
    model.full_sort_predict([torch.tensor([0]), None])
    assert model.representation_passes == passes + 2


def test_graph_cache_default_location_and_reuse(demo, monkeypatch, caplog):
    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)
    caplog.set_level(logging.INFO, logger="mmrec_rearm")
    demo.model(rearm_cache_dir=None)
    assert (demo.root / demo.name / ".rearm_cache").is_dir()
    assert "REARM graphs built" in caplog.text
    caplog.clear()
    demo.model(rearm_cache_dir=None)
    assert "REARM graphs read from the cache" in caplog.text


def test_graph_cache_folder_is_chosen_by_the_model_not_by_the_data_source(demo, monkeypatch, tmp_path):
    from mmrec_rearm.data import TrainingData

    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    plain = TrainingData.from_arrays.__func__
    # the data's source is a record only: without it the graphs still go beside the dataset
    monkeypatch.setattr(TrainingData, "from_arrays",
                        classmethod(lambda cls, *args, source=None, **kwargs: plain(cls, *args, **kwargs)))
    demo.model(rearm_cache_dir=None)
    assert (demo.root / demo.name / ".rearm_cache").is_dir()
    assert not (tmp_path / "xdg").exists()


# --------------------------------------------------------------------------------------------
# settings and presets


def test_baby_preset_is_applied_and_logged(tmp_path, caplog):
    demo = Demo(tmp_path, name="baby")
    caplog.set_level(logging.INFO, logger="mmrec_rearm")
    cfg = demo.config()
    for key in ("n_layers", "rank"):
        cfg.pop(key)
    model = REARM(cfg, demo.loader())
    s = model.settings
    assert (s.n_layers, s.rank, s.self_attn_dropout, s.cross_attn_dropout) == (4, 3, 0.4, 0.6)
    assert (s.cl_temperature, s.cl_loss_weight, s.ort_loss_weight, s.reg_weight) == (0.6, 5e-6, 5e-5, 5e-4)
    assert s.graph["user_knn_k"] == 10 and s.preset.origin["user_knn_k"] == "config"
    assert s.graph["ii_co_weight"] == 0.2 and s.graph["u_mm_image_weight"] == 0.2
    line = next(r.getMessage() for r in caplog.records if "preset" in r.getMessage())
    assert line.startswith("REARM preset 'baby' for dataset 'baby': n_layers=4, ")
    assert "rank=3" in line and "embedding" not in line
    assert "reg_weight=0.0005" in line and "u_mm_image_weight=0.2" in line
    assert "user_knn_k=10 (config)" in line


def _settings(cfg: dict, dataset_yaml=None):
    return presets.read_settings(cfg, lambda key, default=None: cfg.get(key, default) if cfg.get(key) is not None
                                 else default, dataset_yaml=dataset_yaml or {})


def test_presets_per_dataset_and_fallback():
    sports = _settings({"dataset": "sports"})
    assert (sports.n_layers, sports.rank, sports.self_attn_dropout, sports.reg_weight) == (5, 7, 1.0, 0.05)
    assert sports.graph == {"user_knn_k": 25, "item_knn_k": 5, "u_mm_image_weight": 0.0,
                            "i_mm_image_weight": 0.2, "uu_co_weight": 0.9, "ii_co_weight": 0.2}
    clothing = _settings({"dataset": "Clothing"})
    assert (clothing.cl_temperature, clothing.cross_attn_dropout, clothing.graph["user_knn_k"]) == (0.03, 0.1, 45)
    other = _settings({"dataset": "tiktok"})
    assert not other.preset.known_dataset and other.preset.preset == "baby" and other.n_layers == 4
    assert "no preset for dataset 'tiktok'" in presets.describe(other.preset, "tiktok")


def test_explicit_values_win_over_dataset_yaml_over_preset():
    s = _settings({"dataset": "sports", "n_layers": 2}, dataset_yaml={"n_layers": 3, "rank": 9})
    assert s.n_layers == 2 and s.preset.origin["n_layers"] == "config"
    assert s.rank == 9 and s.preset.origin["rank"] == "dataset yaml"
    assert s.cl_temperature == 1.5 and s.preset.origin["cl_temperature"] == "preset"
    line = presets.describe(s.preset, "sports")
    assert "n_layers=2 (config)" in line and "rank=9 (dataset yaml)" in line


def test_dataset_yaml_is_read_from_mmrec_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs" / "dataset").mkdir(parents=True)
    (tmp_path / "configs" / "dataset" / "mine.yaml").write_text("n_ii_layers: 3\nreg_weight: 1e-4\n")
    monkeypatch.chdir(tmp_path)
    assert presets.read_dataset_yaml("mine") == {"n_ii_layers": 3, "reg_weight": 1e-4}
    assert presets.read_dataset_yaml("absent") == {}
    s = presets.read_settings({"dataset": "mine"}, lambda key, default=None: {"dataset": "mine"}.get(key, default))
    assert s.n_ii_layers == 3 and s.reg_weight == 1e-4


@pytest.mark.parametrize("cfg, message", [
    ({"n_layers": [2, 3]}, "list .n_layers. in hyper_parameters"),
    ({"s_drop": 0.3}, "official code's flag name; this model reads 'self_attn_dropout'"),
    ({"ablation": "wo_everything"}, "must be one of none, wo_uu"),
    ({"rank": 0}, "'rank' must lie in"),
    ({"rank": 2.5}, "'rank' must be an integer"),
    ({"self_attn_dropout": 1.5}, "'self_attn_dropout' must lie in"),
    ({"cl_temperature": 0}, "'cl_temperature' must lie in"),
    ({"modalities": "third"}, "'modalities' must be"),
    ({"train_raw_features": "yes"}, "must be true or false"),
    ({"weight_decay_mode": "adamw"}, "must be one of decoupled, coupled, l2"),
    ({"malloc_mmap_threshold_mb": 64}, "'malloc_mmap_threshold_mb' must lie in"),
])
def test_bad_settings_are_named(cfg, message):
    with pytest.raises(ConfigError, match=message):
        _settings({"dataset": "baby", **cfg})


def test_decoupled_decay_refuses_a_second_weight_decay(demo):
    with pytest.raises(ConfigError, match="set weight_decay: 0.0"):
        demo.model(weight_decay=1e-4)


def test_coupled_mode_without_weight_decay_warns(demo, caplog):
    caplog.set_level(logging.WARNING, logger="mmrec_rearm")
    demo.model(weight_decay_mode="coupled")
    assert "not regularised" in caplog.text


# --------------------------------------------------------------------------------------------
# weight decay modes


class _NoUpdate(torch.optim.Optimizer):
    """An optimizer whose step changes nothing itself: what moves is the decay before the step."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        return None


def test_decoupled_decay_uses_the_stepping_optimizers_current_lr(demo):
    model = demo.model(reg_weight=0.5, learning_rate=0.1, learning_rate_scheduler=[0.5, 1])
    optimizer = _NoUpdate(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["lr"] = 0.05  # as the host's scheduler sets it; the model counts no epochs
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    sum(model.calculate_loss(demo.batch())).backward()
    for name, p in model.named_parameters():  # backward alone decays nothing
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
    optimizer.step()
    factor = 1 - 0.05 * 0.5
    for name, p in model.named_parameters():
        if p.grad is None:  # like AdamW: no gradient in this step, no decay
            assert name.endswith(("compress.weight", "compress.bias")), name
            torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
        else:
            torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


def test_adam_with_the_decoupled_decay_steps_exactly_like_adamw(demo):
    ours = demo.model(reg_weight=0.5, learning_rate=0.1)
    reference = copy.deepcopy(ours)
    assert decay.attached_weight(reference) == 0.5  # a deep copy decays like the original ...
    decay.detach(reference)  # ... but this one is stepped by AdamW itself
    adam = torch.optim.Adam(ours.parameters(), lr=0.1)  # MMRec's optimizer: no weight decay
    adamw = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.5)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch) for opt in (adam, adamw)]
    for step in range(4):
        for model, optimizer in ((ours, adam), (reference, adamw)):
            model.train()
            optimizer.zero_grad()
            torch.manual_seed(step)  # the same attention dropout draws on both sides
            sum(model.calculate_loss(demo.batch(seed=step))).backward()
            optimizer.step()
        if step == 1:  # an epoch boundary: the lr halves
            for schedule in schedules:
                schedule.step()
        for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0, msg=f"step {step}: {name}")


def test_decay_leaves_other_optimizers_and_modes_alone(demo):
    model = demo.model(reg_weight=0.5)
    other = torch.nn.Linear(2, 2)
    other(torch.ones(1, 2)).sum().backward()
    before = other.weight.detach().clone()
    _NoUpdate(other.parameters(), lr=1.0).step()  # an optimizer without the model's parameters
    torch.testing.assert_close(other.weight.detach(), before, rtol=0, atol=0)
    for overrides in ({"weight_decay_mode": "l2"}, {"weight_decay_mode": "coupled", "weight_decay": 1e-3},
                      {"reg_weight": 0.0}):
        model = demo.model(**{"reg_weight": 0.5, **overrides})
        assert decay.attached_weight(model) == 0.0
        sum(model.calculate_loss(demo.batch())).backward()
        before = model.user_id.weight.detach().clone()
        _NoUpdate(model.parameters(), lr=1.0).step()
        torch.testing.assert_close(model.user_id.weight.detach(), before, rtol=0, atol=0)


def test_l2_mode_returns_the_penalty_term(demo):
    model = demo.model(weight_decay_mode="l2", reg_weight=1e-3)
    terms = model.calculate_loss(demo.batch())
    expected = 1e-3 * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    assert float(terms[3].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(demo.model().calculate_loss(demo.batch())[3].detach()) == 0.0


# --------------------------------------------------------------------------------------------
# switches


def test_frozen_raw_features_are_buffers_with_the_same_keys(demo):
    trained, frozen = demo.model(), demo.model(train_raw_features=False)
    names = {name for name, _ in frozen.named_parameters()}
    assert not any(name.startswith(("item_raw", "user_raw")) for name in names)
    assert set(trained.state_dict()) == set(frozen.state_dict())
    assert finite(frozen.calculate_loss(demo.batch()))


def test_matrix_attention_switch(demo):
    model = demo.model(attention="matrix")
    assert type(model.self_attn[0]).__name__ == "MatrixAttention"
    terms = model.calculate_loss(demo.batch())
    assert finite(terms)
    sum(terms).backward()
    assert model.self_attn[0].query.weight.grad is not None


@pytest.mark.parametrize("ablation", presets.ABLATIONS)
def test_every_ablation_builds_and_gives_finite_loss(demo, ablation):
    model = demo.model(ablation=ablation)
    terms = model.calculate_loss(demo.batch())
    assert finite(terms)
    sum(terms).backward()
    d = SMALL["embedding_size"]
    users, _ = model.eval()()
    s = model.settings
    assert (model.user_graph is None) == (ablation in ("wo_uu", "wo_hom"))
    assert (model.item_graph is None) == (ablation in ("wo_ii", "wo_hom"))
    has_meta = ablation not in ("wo_meta", "wo_ref")
    assert (model.user_meta is not None) == has_meta
    assert users.shape[1] == (3 if has_meta else 2) * d
    if ablation in ("wo_ort", "wo_ref"):
        assert float(terms[2].detach()) == 0.0
    else:
        assert float(terms[2].detach()) > 0.0
    co = {"wo_co": 0.0, "wo_sim": 1.0}.get(ablation)
    if co is not None:
        assert s.graph["uu_co_weight"] == s.graph["ii_co_weight"] == co


@pytest.mark.parametrize("choice, names", [("first", ("image_feat",)), ("second", ("text_feat",)),
                                           ([1, 0], ("text_feat", "image_feat"))])
def test_modality_selection(demo, choice, names):
    model = demo.model(modalities=choice)
    assert model.modality_names == names
    terms = model.calculate_loss(demo.batch())
    assert finite(terms)
    if len(names) == 1:  # no pair of modalities: no contrastive / orthogonal term, no cross-attention
        assert float(terms[1].detach()) == 0.0 and float(terms[2].detach()) == 0.0 and len(model.cross_attn) == 0
        assert model.eval()()[0].shape[1] == 2 * SMALL["embedding_size"]


def test_modality_index_out_of_range(demo):
    with pytest.raises(ConfigError, match="only 2 are available"):
        demo.model(modalities=[2])


def test_a_third_modality_from_extra_feature_files(demo):
    rng = np.random.default_rng(5)
    np.save(demo.root / demo.name / "audio_feat.npy", rng.standard_normal((demo.n_items, 6)).astype(np.float32))
    model = demo.model(extra_feature_files=["audio_feat.npy"], u_modal_weights=[0.4, 0.3, 0.3],
                       i_modal_weights=[0.2, 0.4, 0.4])
    assert model.modality_names == ("image_feat", "text_feat", "audio_feat") and model.n_modalities == 3
    terms = model.calculate_loss(demo.batch())
    assert finite(terms) and float(terms[1].detach()) > 0
    assert model.eval()()[1].shape[1] == 4 * SMALL["embedding_size"]
    with pytest.raises(CheckpointError, match="no official counterpart"):
        to_official_state_dict(model)
    with pytest.raises(DatasetError, match=r"feature file\(s\) not found: .*video_feat\.npy \(extra_feature_files\[0\]\)"):
        demo.model(extra_feature_files=["video_feat.npy"])


# --------------------------------------------------------------------------------------------
# official checkpoints


def test_official_key_map_covers_our_two_modality_model(demo):
    model = demo.model()
    table = official_key_map()
    assert set(table.values()) == set(model.state_dict())
    assert len(set(table.values())) == len(table)
    assert table["ly_norm.weight"] == "norm.weight" and table["prl.weight"] == "act.weight"
    assert table["mlp_i2.linear_out.bias"] == "item_meta.second.out.bias"
    assert table["self_i_attn2.in_proj_weight"] == "self_attn.1.qkv_weight"
    assert table["mutual_i_attn1.out_proj.bias"] == "cross_attn.0.out_bias"
    assert table["user_t_prefer"] == "user_raw.1.weight"


def test_official_state_dict_round_trip(demo):
    source = demo.model()
    torch.manual_seed(123)
    target = REARM(demo.config(), demo.loader())
    official = to_official_state_dict(source)
    assert "image_embedding.weight" in official and "meta_netu.weight" in official
    load_official_state_dict(target, official)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    source.eval(), target.eval()
    torch.testing.assert_close(target()[0], source()[0])


def test_official_state_dict_errors_list_every_problem(demo):
    model = demo.model()
    official = to_official_state_dict(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(official)
    del broken["prl.weight"]
    broken["bogus.weight"] = torch.zeros(1)
    broken["ly_norm.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(model, broken)
    text = str(info.value)
    assert "missing keys (1): prl.weight" in text
    assert "unexpected keys (1): bogus.weight" in text
    assert "shape mismatches (1): ly_norm.bias (3,)" in text
    for key, value in model.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="without an official counterpart"):
        load_official_state_dict(demo.model(attention="matrix"), official)


def test_raw_tables_in_row_blocks_behave_like_one_table(demo, monkeypatch):
    whole = demo.model(reg_weight=0.5)
    monkeypatch.setattr(RawTable, "BLOCK_ELEMENTS", 16 * 7)  # 7 rows of the 16-d image table
    blocked = demo.model(reg_weight=0.5)
    assert len(blocked.item_raw[0].blocks) == -(-demo.n_items // 7) and len(whole.item_raw[0].blocks) == 1
    assert set(blocked.state_dict()) == set(whole.state_dict())
    blocked.load_state_dict(whole.state_dict())
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(blocked.state_dict()[key], value, rtol=0, atol=0)
    batch = demo.batch()
    for model in (whole, blocked):  # same draws of the dropout masks
        torch.manual_seed(7)
        sum(model.calculate_loss(batch)).backward()
    torch.testing.assert_close(blocked.item_raw[0].weight, whole.item_raw[0].weight)
    grads = torch.cat([b.grad for b in blocked.user_raw[1].blocks])
    torch.testing.assert_close(grads, whole.user_raw[1].blocks[0].grad)
    with pytest.raises(RuntimeError, match="size mismatch for item_raw.0.weight"):
        blocked.load_state_dict({**whole.state_dict(), "item_raw.0.weight": torch.zeros(3, 16)})


def test_grid_in_the_dataset_yaml_is_explained():
    with pytest.raises(ConfigError, match="hides such a grid"):
        _settings({"dataset": "baby"}, dataset_yaml={"n_layers": [2, 3]})


def test_graphs_move_with_the_model_and_stay_out_of_its_state(demo):
    model = demo.model()
    graphs = [model.user_graph, model.item_graph, model.interaction_graph]
    assert not any("graph" in key for key in model.state_dict())
    model.double()
    assert all(g.dtype == torch.float64 for g in graphs)
    users, items = model.eval()()  # float64 end to end: no graph was left behind in float32
    assert users.dtype == items.dtype == torch.float64


def test_host_allocator_tuning_only_for_cpu_models(monkeypatch):
    from mmrec_rearm.model import allocator
    calls = []
    monkeypatch.setattr(allocator, "use_mmap_for_blocks_from", lambda mb: calls.append(mb) or True)
    assert allocator.tune_host_allocator(torch.device("cuda"), 4.0) is False and calls == []
    assert allocator.tune_host_allocator(torch.device("cpu"), 4.0) is True and calls == [4.0]


def test_mmap_threshold_setting_defaults_and_applies_on_glibc():
    assert _settings({"dataset": "baby"}).malloc_mmap_threshold_mb == 4.0
    assert _settings({"dataset": "baby", "malloc_mmap_threshold_mb": 0}).malloc_mmap_threshold_mb == 0.0
    from mmrec_rearm.model import allocator
    assert allocator.use_mmap_for_blocks_from(0) is False  # 0 leaves the allocator alone
    import platform
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert allocator.use_mmap_for_blocks_from(4) is True
