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

Host fixes (:mod:`.host_fixes`): on a CPU-only host, DRAGON and DualGNN keep a CPU-registered
Parameter that breaks their first ``forward()``, LATTICE, GRCN and MGCN call ``.cuda()``
unconditionally, and SLMRec and MGCN import torch_scatter, which has no wheel for every torch.
This process fixes each in memory only (no file of the checkout changes) and the record lists what
was applied under ``host_fixes``. Set ``MMREC_REARM_HOST_FIXES=0`` to run the models exactly as
MMRec ships them.

Checkpoints (MMRec ignores ``saved``): for the models in :data:`CHECKPOINT_MODELS` the recording
trainer also writes the best-on-validation weights, each time MMRec's early stopping records a new
best validation score, to ``<results>/<dataset>/checkpoints/<run key>.pt`` (derived from
``result_path``, which :mod:`.launch` puts in ``<results>/<dataset>/logs/``; an explicit
``checkpoint_path`` in the spec wins, an empty one disables it, and so does the environment
variable ``MMREC_REARM_CHECKPOINTS=0``). The file is written with ``torch.save`` to a temporary
name and moved into place with ``os.replace``, so it is always either the previous best or the new
one. Contents: :func:`checkpoint_payload`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import sys
import time
import traceback

try:
    from . import host_fixes
except ImportError:  # run by path (see above): the module lies beside this file, first on sys.path
    import host_fixes  # type: ignore[no-redef]
unregister_cpu_parameters = host_fixes.unregister_cpu_parameters  # importable from here as before

PROGRESS_PREFIX = "@@mmrec-rearm "

#: Models whose best-on-validation weights are saved by default (MMRec model names).
CHECKPOINT_MODELS = ("REARM",)
#: ``format`` / ``version`` fields of a checkpoint file (read back by :mod:`.checkpoints`).
CHECKPOINT_FORMAT = "mmrec-rearm-checkpoint"
CHECKPOINT_VERSION = 1
#: Set to 0 / false / no to save no checkpoint at all (the spec cannot carry it from compare).
CHECKPOINT_ENV = "MMREC_REARM_CHECKPOINTS"
_RESULT_SUFFIX = ".result.json"

_EVAL_LINE = re.compile(r"epoch (\d+) evaluating \[time: ([0-9.]+)s, valid_score: ([-+0-9.eEnaif]+)\]")
_TRAIN_LINE = re.compile(r"training \[time: ([0-9.]+)s")
_LOSS_VALUE = re.compile(r"train(?:_| )loss\d*: ([-+0-9.eEnaif]+)")
_NAN_LINE = re.compile(r"Loss is nan at epoch: (\d+)")
_METRIC_PAIR = re.compile(r"([A-Za-z]+@\d+): ([-+0-9.eE]+)")


def emit(event: dict) -> None:
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _plain_metrics(result) -> dict:
    return {str(k): float(v) for k, v in dict(result or {}).items()}


class _Watcher(logging.Handler):
    """Turns MMRec's per-epoch log records into progress events and a history list."""

    def __init__(self, started: float):
        super().__init__(level=logging.INFO)
        self.started = started
        self.trainer = None
        self.history = []
        self.best_epoch = None
        self.nan_epoch = None
        self._loss = None
        self._train_s = None
        # seconds of the last _train_epoch as timed by the recording trainer: MMRec's log line has
        # no time for models whose loss is a tuple (its formatter overwrites the time prefix)
        self.timed_train_s = None

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D401 - logging API
        try:
            self._consume(record.getMessage())
        except Exception:  # progress must never break a run
            pass

    def _consume(self, message: str) -> None:
        train = _TRAIN_LINE.search(message)
        losses = _LOSS_VALUE.findall(message)
        if train or losses:
            self._train_s = float(train.group(1)) if train else self.timed_train_s
            values = [_number(v) for v in losses]
            self._loss = sum(values) if values and None not in values else None
            return
        nan = _NAN_LINE.search(message)
        if nan:
            self.nan_epoch = int(nan.group(1))
            return
        found = _EVAL_LINE.search(message)
        if not found:
            return
        epoch = int(found.group(1))
        score = _number(found.group(3))
        # MMRec's early_stopping has already run when this line is logged: cur_step is 0 exactly
        # when this epoch became the best one.
        if self.trainer is not None and getattr(self.trainer, "cur_step", None) == 0:
            self.best_epoch = epoch
        best = getattr(self.trainer, "best_valid_score", None)
        entry = {"epoch": epoch, "loss": self._loss, "train_s": self._train_s,
                 "eval_s": float(found.group(2)), "valid_score": score}
        self.history.append(entry)
        emit({"event": "epoch", **entry, "best_epoch": self.best_epoch,
              "best_score": float(best) if best is not None and best != -1 else None,
              "elapsed": round(time.time() - self.started, 2)})


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


def parse_final_lines(text: str):
    """(valid, test) metric dicts from the last "best valid result:" line of an MMRec log and the
    first single-line "test result:" after it; (None, None) when absent. Values have 4 decimals."""
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if "best valid result: " in lines[index]:
            valid = dict((k, float(v)) for k, v in _METRIC_PAIR.findall(lines[index].split("best valid result: ", 1)[1]))
            for later in lines[index + 1:]:
                if "test result: " in later:
                    pairs = _METRIC_PAIR.findall(later.split("test result: ", 1)[1])
                    if pairs:
                        return valid, dict((k, float(v)) for k, v in pairs)
            return valid, None
    return None, None


# ------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_target(spec: dict):
    """(path, run key) of the checkpoint this run writes, or (None, None).

    ``spec['checkpoint_path']`` wins when present (empty: none). Otherwise, for a model of
    :data:`CHECKPOINT_MODELS` whose ``result_path`` is ``<root>/logs/<model>-seed<s>-<key>.result.json``
    (the layout of :func:`mmrec_rearm.experiments.launch.launch`), ``<root>/checkpoints/<key>.pt``.
    """
    if host_fixes.env_off(CHECKPOINT_ENV):
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


def _json_plain(value):
    """``value`` as JSON would give it back (torch.device and other objects become strings), so a
    checkpoint loads with ``torch.load(weights_only=True)``."""
    return json.loads(json.dumps(value, default=str))


def checkpoint_payload(model, config, *, epoch, valid, test, run_key=None) -> dict:
    """Everything needed to rebuild ``model`` without MMRec's trainer, plus its weights.

    ``config``: MMRec's ``Config`` (its ``final_config_dict`` is taken) or a plain mapping. When the
    model exposes the dataset-dependent values it resolved (REARM: ``settings.preset.values``), they
    are written into the stored configuration, so rebuilding does not depend on the dataset YAML of
    the MMRec checkout it was trained in. Tensors whose storage is larger than themselves (row
    blocks, views) are copied first, as ``torch.save`` would otherwise write the whole storage.
    """
    settings = dict(getattr(config, "final_config_dict", None) or config)
    resolved = getattr(getattr(getattr(model, "settings", None), "preset", None), "values", None)
    if isinstance(resolved, dict):
        settings.update(resolved)
    settings = _json_plain(settings)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        stored = (tensor.untyped_storage().nbytes() if hasattr(tensor, "untyped_storage")
                  else tensor.storage().size() * tensor.element_size())  # torch < 2.0
        if stored != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        state[name] = tensor
    folder = os.path.abspath(str(settings.get("data_path") or "") + str(settings.get("dataset") or ""))
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model": str(settings.get("model") or type(model).__name__), "dataset": settings.get("dataset"),
            "dataset_folder": folder, "config": settings,
            "n_users": int(getattr(model, "n_users", 0) or 0), "n_items": int(getattr(model, "n_items", 0) or 0),
            "epoch": epoch, "valid": _json_plain(dict(valid or {})), "test": _json_plain(dict(test or {})),
            "valid_metric": str(settings.get("valid_metric") or "").lower() or None,
            "run_key": run_key, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "state_dict": state}


def save_checkpoint(path: str, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically: a temporary file in the same folder, fsynced,
    then ``os.replace``. On any error the temporary file is removed and ``path`` is unchanged."""
    import torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


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
    watcher = _Watcher(started)
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
        captured.setdefault("host_fixes", []).extend(host_fixes.apply_import_fixes(model))
        original_get_model = getattr(quick_start_module, "get_model", None)
        fix_names = host_fixes.CPU_PARAMETER_FIXES.get(model, ())
        if fix_names and original_get_model is not None and not host_fixes.env_off(host_fixes.HOST_FIXES_ENV):
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
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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
    result = run(spec)
    write_atomically(spec["result_path"], result)
    emit({"event": "end", "status": result["status"], "message": result.get("message")})
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
