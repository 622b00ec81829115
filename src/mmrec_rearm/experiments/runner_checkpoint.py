"""The best-validation checkpoint a run writes (runner side, standard library; torch is imported
when a file is written, inside MMRec's process).

For the models in :data:`CHECKPOINT_MODELS` the recording trainer of :mod:`.runner` writes the
weights of the best validation epoch, each time MMRec's early stopping records a new best score,
to ``<results>/<dataset>/checkpoints/<run key>.pt`` (derived from the spec's ``result_path``, which
:mod:`.launch` puts in ``<results>/<dataset>/logs/``; an explicit ``checkpoint_path`` in the spec
wins, an empty one disables it, and so does ``MMREC_REARM_CHECKPOINTS=0``). The file is written
to a temporary name and moved into place, so it is always the previous best or the new one.
Contents: :func:`checkpoint_payload`, the ``best-validation`` kind of :mod:`.checkpoint_format`; read
back by :mod:`.checkpoints`.
"""
from __future__ import annotations

import os
import time


try:  # inside the package
    from . import checkpoint_format
    from . import runner_events as _events
    from . import runner_fixes as _fixes
    from . import runner_state as _state
except ImportError:  # run by path: runner.py has loaded them under these names
    import _mmrec_rearm_checkpoint_format as checkpoint_format  # type: ignore[no-redef]
    import _mmrec_rearm_runner_events as _events  # type: ignore[no-redef]
    import _mmrec_rearm_runner_fixes as _fixes  # type: ignore[no-redef]
    import _mmrec_rearm_runner_state as _state  # type: ignore[no-redef]

emit = _events.emit

#: Models whose best-on-validation weights are saved by default (MMRec model names).
CHECKPOINT_MODELS = ("REARM",)
#: Set to 0 / false / no to save no checkpoint at all (the spec cannot carry it from compare).
CHECKPOINT_ENV = "MMREC_REARM_CHECKPOINTS"
_RESULT_SUFFIX = ".result.json"


def checkpoint_target(spec: dict):
    """(path, run key) of the checkpoint this run writes, or (None, None).

    ``spec['checkpoint_path']`` wins when present (empty: none). Otherwise, for a model of
    :data:`CHECKPOINT_MODELS` whose ``result_path`` is ``<root>/logs/<model>-seed<s>-<key>.result.json``
    (the layout of :func:`mmrec_rearm.experiments.launch.launch`), ``<root>/checkpoints/<key>.pt``.
    """
    if _fixes.env_off(CHECKPOINT_ENV):
        return None, None
    result_path = str(spec.get("result_path") or "")
    name = os.path.basename(result_path)
    key = name[:-len(_RESULT_SUFFIX)].rsplit("-", 1)[-1] if name.endswith(_RESULT_SUFFIX) else None
    if "checkpoint_path" in spec:
        return (str(spec["checkpoint_path"]), key) if spec["checkpoint_path"] else (None, None)
    if spec.get("model") not in CHECKPOINT_MODELS or not key:
        return None, None
    logs = os.path.dirname(os.path.abspath(result_path))
    if os.path.basename(logs) != "logs":
        return None, None
    return os.path.join(os.path.dirname(logs), "checkpoints", f"{key}.pt"), key


def checkpoint_payload(model, config, *, epoch, valid, test, run_key=None) -> dict:
    """Everything needed to rebuild ``model`` without MMRec's trainer, plus its weights: a
    :data:`~.checkpoint_format.KIND_BEST` payload of :mod:`.checkpoint_format`.

    ``config``: MMRec's ``Config`` (its ``final_config_dict`` is taken) or a plain mapping. When the
    model exposes the dataset-dependent values it resolved (REARM: ``settings.preset.values``), they
    are written into the stored configuration, so rebuilding does not depend on the dataset YAML of
    the MMRec checkout it was trained in. ``data_fingerprint`` is the model's fingerprint of the data
    it was built on (REARM: training interactions, features, counts), None for a model without one.
    Tensors whose storage is larger than themselves (row blocks, views) are copied first, as
    ``torch.save`` would otherwise write the whole storage.
    """
    settings = dict(getattr(config, "final_config_dict", None) or config)
    resolved = getattr(getattr(getattr(model, "settings", None), "preset", None), "values", None)
    if isinstance(resolved, dict):
        settings.update(resolved)
    plain = checkpoint_format.json_plain
    settings = plain(settings)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        stored = (tensor.untyped_storage().nbytes() if hasattr(tensor, "untyped_storage")
                  else tensor.storage().size() * tensor.element_size())  # torch < 2.0
        if stored != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        state[name] = tensor
    folder = os.path.abspath(str(settings.get("data_path") or "") + str(settings.get("dataset") or ""))
    return checkpoint_format.payload(
        checkpoint_format.KIND_BEST,
        model=str(settings.get("model") or type(model).__name__), dataset=settings.get("dataset"),
        dataset_folder=folder, config=settings, data_fingerprint=getattr(model, "data_fingerprint", None),
        n_users=int(getattr(model, "n_users", 0) or 0), n_items=int(getattr(model, "n_items", 0) or 0),
        epoch=epoch, valid=plain(dict(valid or {})), test=plain(dict(test or {})),
        valid_metric=str(settings.get("valid_metric") or "").lower() or None,
        run_key=run_key, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), state_dict=state)


def save_checkpoint(path: str, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically (:func:`.runner_state.save`, the one writer of
    checkpoint files): on any error ``path`` is unchanged and no temporary file is left."""
    _state.save(path, payload, what="the checkpoint")


class BestKeeper:
    """Saves the model each time an evaluation epoch becomes the best on validation.

    MMRec's ``fit`` evaluates valid then test in every evaluation epoch and runs its early stopping
    in between; ``cur_step`` is 0 after it exactly when the epoch improved the best score. So at
    the test evaluation of an epoch with ``cur_step == 0`` the weights, the epoch and both metric
    dicts are those of the new best epoch.
    """

    def __init__(self, path, key):
        self.path, self.key = path, key
        self.test_data = None
        self.epoch = None
        self.valid = None
        self.saved_epoch = None
        self.error = None

    def observe(self, trainer, data, result) -> None:
        if self.path is None or self.test_data is None:
            return
        if data is not self.test_data:
            self.valid = result
            return
        valid, self.valid = self.valid, None
        if valid is None or getattr(trainer, "cur_step", None) != 0:
            return
        try:
            payload = checkpoint_payload(trainer.model, trainer.config, epoch=self.epoch, valid=valid,
                                         test=result, run_key=self.key)
            save_checkpoint(self.path, payload)
        except Exception as exc:  # a failed save must not cost the training run
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            emit({"event": "checkpoint_error", "path": self.path, "message": self.error})
            return
        self.saved_epoch = self.epoch
        emit({"event": "checkpoint", "path": self.path, "epoch": self.epoch})
