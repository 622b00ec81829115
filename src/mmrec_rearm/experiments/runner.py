"""Subprocess entry point: one MMRec run through MMRec's own ``quick_start``, reported as JSON.

Started by :mod:`mmrec_rearm.experiments.launch` as ``python <this file> SPEC.json`` with the
working directory set to MMRec's ``src`` (MMRec reads ``configs/`` and imports ``utils``,
``models`` and ``common`` relative to it). It is run by path, not with ``-m``, and imports only
the standard library and MMRec, so a Python that has MMRec's requirements but not our package
can still run the baselines.

How results are captured, and why: ``quick_start`` returns nothing and only logs text.
Before calling it, this process points the name ``get_trainer`` inside the imported
``utils.quick_start`` module (in memory only) at a function returning a subclass of MMRec's
``Trainer`` that (a) keeps the ``(best_valid_score, best_valid_result, best_test_upon_valid)``
returned by ``fit`` and (b) watches MMRec's log records for per-epoch progress. ``quick_start``
itself runs unchanged, MMRec's ``Trainer`` class is untouched, and no file of the checkout is
modified. If the subclass was not used (a future MMRec that builds its trainer differently) the
final "best valid result" / "test result" lines of MMRec's log file are parsed instead; the
record says which source was used. (MMRec's evaluator rounds metrics to 4 decimals either way.)

The spec (JSON): ``model``, ``dataset``, ``config_dict`` (passed to quick_start as is),
``save_model`` (bool), ``result_path`` (where the result JSON is written, atomically), and
optionally ``checkpoint_path`` (see below).
Progress lines on stdout start with ``@@mmrec-rearm `` followed by one JSON object.

Host fix on CPU (DRAGON, DualGNN; :data:`CPU_PARAMETER_FIXES`): these models create
``result_embed`` as ``nn.Parameter(...).to(device)``. On a GPU ``.to()`` returns a plain tensor
copy, which ``forward()`` later replaces; on the CPU it returns the Parameter itself, which stays
registered, and the first ``forward()`` fails ("cannot assign 'torch.FloatTensor' as parameter
'result_embed'"). When the model is built, this process turns that registered Parameter back into
the plain tensor a GPU run has (same values; no longer in ``parameters()``, so the optimiser sees
what it sees on a GPU). Only quick_start's own reference to ``get_model`` is wrapped, in memory;
no file changes. The record lists what was applied under ``host_fixes``. Set
``MMREC_REARM_HOST_FIXES=0`` to run the models exactly as MMRec ships them.

Checkpoints (MMRec ignores ``saved``): for the models in :data:`CHECKPOINT_MODELS` the recording
trainer also writes the best-on-validation weights, each time MMRec's early stopping records a new
best validation score, to ``<results>/<dataset>/checkpoints/<run key>.pt`` (derived from
``result_path``, which :mod:`.launch` puts in ``<results>/<dataset>/logs/``; an explicit
``checkpoint_path`` in the spec wins, an empty one disables it, and so does the environment
variable ``MMREC_REARM_CHECKPOINTS=0``). The file is written with ``torch.save`` to a temporary
name and moved into place with ``os.replace``, so it is always either the previous best or the new
one. Contents: :func:`checkpoint_payload`, in the format of :mod:`.checkpoint_format`.

This file imports only the standard library and MMRec at module level; its own helpers
(:mod:`.checkpoint_format`, :mod:`.progress`, :mod:`mmrec_rearm.atomic`) are standard-library-only
files loaded by path when it runs by path. Ctrl-C (or SIGINT from the parent) ends it with exit
status 130 and no result: an interrupted run is redone by the next ``compare``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import traceback


def _own_module(name: str, relative_path: str):
    """Our standard-library-only module ``name``: imported normally when this file is part of the
    package, loaded from ``relative_path`` (relative to this file) when it runs by path."""
    if __package__:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(
        "_mmrec_rearm_" + name.rsplit(".", 1)[-1], os.path.join(os.path.dirname(os.path.abspath(__file__)), relative_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


checkpoint_format = _own_module("mmrec_rearm.experiments.checkpoint_format", "checkpoint_format.py")
atomic = _own_module("mmrec_rearm.atomic", os.path.join("..", "atomic.py"))

progress = _own_module("mmrec_rearm.experiments.progress", "progress.py")
PROGRESS_PREFIX = progress.PROGRESS_PREFIX
emit = progress.emit
parse_final_lines = progress.parse_final_lines

#: Models whose best-on-validation weights are saved by default (MMRec model names).
CHECKPOINT_MODELS = ("REARM",)
#: Set to 0 / false / no to save no checkpoint at all (the spec cannot carry it from compare).
CHECKPOINT_ENV = "MMREC_REARM_CHECKPOINTS"
_RESULT_SUFFIX = ".result.json"
#: MMRec model -> attributes that it registers as Parameters only on the CPU (see the module doc).
CPU_PARAMETER_FIXES = {"DRAGON": ("result_embed",), "DualGNN": ("result_embed",)}
#: Set to 0 / false / no / off to run those models without the CPU fix.
HOST_FIXES_ENV = "MMREC_REARM_HOST_FIXES"

def _plain_metrics(result) -> dict:
    return {str(k): float(v) for k, v in dict(result or {}).items()}


def _missing_package(exc: BaseException):
    """Name of the first module that could not be imported in the exception chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _log_file():
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _env_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def unregister_cpu_parameters(model, names) -> list:
    """Replace each Parameter ``names`` that ``model`` (or a submodule) registered on the CPU by a
    plain tensor with the same values and ``requires_grad``, as ``Parameter.to(cuda)`` gives on a
    GPU. -> descriptions of what was changed (empty when nothing was)."""
    changed = []
    for prefix, module in model.named_modules():
        for name in names:
            param = getattr(module, "_parameters", {}).get(name)
            if param is None or getattr(param.device, "type", None) != "cpu":
                continue
            del module._parameters[name]
            setattr(module, name, param.detach().clone().requires_grad_(param.requires_grad))
            where = f"{prefix}.{name}" if prefix else name
            changed.append(f"{type(model).__name__}.{where}: CPU-registered Parameter {tuple(param.shape)} "
                           "made a plain tensor, as .to(device) gives on a GPU")
    return changed


# ------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_target(spec: dict):
    """(path, run key) of the checkpoint this run writes, or (None, None).

    ``spec['checkpoint_path']`` wins when present (empty: none). Otherwise, for a model of
    :data:`CHECKPOINT_MODELS` whose ``result_path`` is ``<root>/logs/<model>-seed<s>-<key>.result.json``
    (the layout of :func:`mmrec_rearm.experiments.launch.launch`), ``<root>/checkpoints/<key>.pt``.
    """
    if _env_off(CHECKPOINT_ENV):
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
    settings = checkpoint_format.json_plain(settings)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        stored = (tensor.untyped_storage().nbytes() if hasattr(tensor, "untyped_storage")
                  else tensor.storage().size() * tensor.element_size())  # torch < 2.0
        if stored != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        state[name] = tensor
    folder = os.path.abspath(str(settings.get("data_path") or "") + str(settings.get("dataset") or ""))
    plain = checkpoint_format.json_plain
    return checkpoint_format.payload(
        checkpoint_format.KIND_BEST,
        model=str(settings.get("model") or type(model).__name__), dataset=settings.get("dataset"),
        dataset_folder=folder, config=settings, data_fingerprint=getattr(model, "data_fingerprint", None),
        n_users=int(getattr(model, "n_users", 0) or 0), n_items=int(getattr(model, "n_items", 0) or 0),
        epoch=epoch, valid=plain(dict(valid or {})), test=plain(dict(test or {})),
        valid_metric=str(settings.get("valid_metric") or "").lower() or None,
        run_key=run_key, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), state_dict=state)


def save_checkpoint(path: str, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically (:func:`mmrec_rearm.atomic.atomic_open`): on
    any error ``path`` is unchanged and no temporary file is left."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.atomic_open(path, "wb", what="the checkpoint") as handle:
        torch.save(payload, handle)


class _BestKeeper:
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


def run(spec: dict) -> dict:
    started = time.time()
    result = {"status": "failed", "host": platform.node(), "python": sys.executable}
    watcher = progress.Watcher(started)
    captured = {}
    keeper = _BestKeeper(*checkpoint_target(spec))
    if keeper.path and os.path.exists(keeper.path):
        os.unlink(keeper.path)  # left by an earlier, failed attempt of this run
    try:
        import importlib.util

        model = spec["model"]
        if importlib.util.find_spec(f"models.{model.lower()}") is None:
            raise RuntimeError(f"MMRec has no module models/{model.lower()}.py in {os.getcwd()}; "
                               "is the model installed into this checkout?")
        import utils.quick_start as quick_start_module
        from utils.utils import get_trainer

        mmrec_trainer = get_trainer()

        class RecordingTrainer(mmrec_trainer):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                watcher.trainer = self
                root = logging.getLogger()
                if watcher not in root.handlers:  # after MMRec's init_logger, so its own setup stands
                    root.addHandler(watcher)
                captured["device"] = str(getattr(self, "device", ""))
                emit({"event": "start", "mmrec_log": _log_file(), "device": captured["device"]})

            def fit(self, *args, **kwargs):
                keeper.test_data = args[2] if len(args) > 2 else kwargs.get("test_data")
                out = super().fit(*args, **kwargs)
                captured["fit"] = out
                return out

            # The two hooks below only observe: the epoch index, and every evaluation's result.
            def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
                keeper.epoch = epoch_idx
                began = time.time()
                out = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
                watcher.timed_train_s = round(time.time() - began, 2)
                return out

            def _valid_epoch(self, eval_data, *args, **kwargs):
                out = super()._valid_epoch(eval_data, *args, **kwargs)
                keeper.observe(self, eval_data, out[1])
                return out

        # Only quick_start's own reference to get_trainer is redirected: MMRec's Trainer class and
        # module stay as they are (its methods name their class, e.g. super(Trainer, self)).
        original_get_trainer = getattr(quick_start_module, "get_trainer", None)
        if original_get_trainer is not None:
            quick_start_module.get_trainer = lambda: RecordingTrainer
        original_get_model = getattr(quick_start_module, "get_model", None)
        fix_names = CPU_PARAMETER_FIXES.get(model, ())
        if fix_names and original_get_model is not None and not _env_off(HOST_FIXES_ENV):
            def get_model_with_cpu_fix(name):
                model_class = original_get_model(name)

                def build(*args, **kwargs):
                    instance = model_class(*args, **kwargs)
                    captured.setdefault("host_fixes", []).extend(unregister_cpu_parameters(instance, fix_names))
                    return instance
                return build
            quick_start_module.get_model = get_model_with_cpu_fix
        try:
            quick_start_module.quick_start(model, spec["dataset"], dict(spec["config_dict"]),
                                           save_model=bool(spec.get("save_model")))
        finally:
            if original_get_trainer is not None:
                quick_start_module.get_trainer = original_get_trainer
            if original_get_model is not None:
                quick_start_module.get_model = original_get_model

        result["mmrec_log"] = _log_file()
        if "fit" in captured:
            best_score, valid, test = captured["fit"]
            result.update(valid=_plain_metrics(valid), test=_plain_metrics(test), result_source="trainer")
            never_improved = best_score is None or float(best_score) == -1
        else:
            text = open(result["mmrec_log"], encoding="utf-8", errors="replace").read() if result["mmrec_log"] else ""
            valid, test = parse_final_lines(text)
            if valid is None or test is None:
                raise RuntimeError("quick_start finished but neither the trainer nor the log gave a result")
            result.update(valid=valid, test=test, result_source="log")
            never_improved = False
        result.update(best_epoch=watcher.best_epoch, epochs_run=len(watcher.history),
                      history=watcher.history, device=captured.get("device"))
        if keeper.saved_epoch is not None:
            result.update(checkpoint=os.path.abspath(keeper.path), checkpoint_epoch=keeper.saved_epoch)
        if keeper.error:
            result["checkpoint_error"] = keeper.error
        if never_improved:
            when = f" (loss became NaN at epoch {watcher.nan_epoch})" if watcher.nan_epoch is not None else ""
            result["message"] = f"training never produced a validated epoch{when}; metrics are MMRec's zeros"
        else:
            result["status"] = "ok"
            if watcher.nan_epoch is not None:
                result["message"] = f"loss became NaN at epoch {watcher.nan_epoch}; training stopped there"
    except KeyboardInterrupt:
        raise  # an interrupted run is not a result: no record, the next compare redoes it
    except BaseException as exc:  # record everything else, including SystemExit from a model
        missing = _missing_package(exc)
        result["error"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        result["missing_package"] = missing
        if missing:
            result["message"] = (f"missing Python package '{missing}' ({type(exc).__name__}: {exc}); "
                                 f"install it into {sys.executable}")
        else:
            result["message"] = f"{type(exc).__name__}: {exc}".strip()[:500]
        result.setdefault("mmrec_log", _log_file())
        result.update(best_epoch=watcher.best_epoch, epochs_run=len(watcher.history), history=watcher.history)
    if captured.get("host_fixes"):
        result["host_fixes"] = captured["host_fixes"]
    result["wall_s"] = round(time.time() - started, 3)
    return result


def write_atomically(path: str, payload: dict) -> None:
    atomic.write_text(path, json.dumps(payload, default=str), what="the run's result")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python runner.py SPEC.json  (run with the working directory MMRec/src)\n")
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        spec = json.load(handle)
    # Run by path, sys.path[0] is this file's folder; MMRec's packages live in the working directory.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.getcwd())
    try:
        result = run(spec)
    except KeyboardInterrupt:  # Ctrl-C: the parent reports it in one line; an interrupted run has no result
        sys.stderr.write("interrupted: the run was stopped and is not recorded\n")
        return 130
    write_atomically(spec["result_path"], result)
    emit({"event": "end", "status": result["status"], "message": result.get("message")})
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
