"""Subprocess entry point: one MMRec run through MMRec's own ``quick_start``, reported as JSON.

Started by :mod:`mmrec_rearm.experiments.launch` as ``python <this file> SPEC.json`` with the
working directory set to MMRec's ``src`` (MMRec reads ``configs/`` and imports ``utils``,
``models`` and ``common`` relative to it). It is run by path, not with ``-m``, and imports only
the standard library, MMRec and its sibling ``runner_*.py`` files (loaded by path), so a Python
that has MMRec's requirements but not our package can still run the baselines.

How results are captured, and why: ``quick_start`` returns nothing and only logs text.
Before calling it, this process points the name ``get_trainer`` inside the imported
``utils.quick_start`` module (in memory only) at a function returning a subclass of MMRec's
``Trainer``. Its hooks around ``fit``, ``_train_epoch`` and ``_valid_epoch`` only observe: they
keep what ``fit`` returns, ``(best_valid_score, best_valid_result, best_test_upon_valid)``, report
progress inside and after every epoch (:mod:`.runner_events`), save the training state after
every epoch and restore it when an interrupted run is resumed (:mod:`.runner_state`).
``quick_start`` itself runs unchanged, MMRec's ``Trainer`` class is untouched, and no file of the
checkout is modified. If the subclass was not used (a future MMRec that builds its trainer
differently) the final "best valid result" / "test result" lines of MMRec's log file are parsed
instead; the record says which source was used. (MMRec's evaluator rounds metrics to 4 decimals
either way.)

The spec (JSON): ``model``, ``dataset``, ``config_dict`` (passed to quick_start as is),
``save_model`` (bool), ``result_path`` (where the result JSON is written, atomically), and
optionally ``run_key``, ``state_path`` (the training state file; none: no states), ``resume``
(default true: continue from a matching state) and ``checkpoint_path`` (see below).
Progress lines on stdout start with ``@@mmrec-rearm `` followed by one JSON object.

Resuming: the training state is saved when the next epoch begins (just before MMRec calls the
model's ``pre_epoch_processing``: the moment at which everything of the finished epoch, early
stopping and the learning-rate step included, is done and nothing of the next has drawn a random
number) and once more when ``fit`` ends. A resumed run restores it and sets MMRec's own
``Trainer.start_epoch``; a state of a run whose loop had ended gives its results without training.

Host fixes (:mod:`.runner_fixes`): on a CPU-only host, DRAGON and DualGNN keep a CPU-registered
Parameter that breaks their first ``forward()``, LATTICE, GRCN and MGCN call ``.cuda()``
unconditionally, and SLMRec and MGCN import torch_scatter, which has no wheel for every torch.
This process fixes each in memory only and the record lists what was applied under
``host_fixes``; ``MMREC_REARM_HOST_FIXES=0`` runs the models exactly as MMRec ships them.

Best-validation checkpoints (REARM; MMRec ignores ``saved``): :mod:`.runner_checkpoint`; they and
the training states are two kinds of the one file format, :mod:`.checkpoint_format`, written
through :mod:`mmrec_rearm.atomic`.

This file imports only the standard library and MMRec at module level; its helpers are
standard-library-only files loaded by path when it runs by path. The launcher starts it with
:func:`mmrec_rearm.processes.start`, so it dies with the command that started it. Ctrl-C (or SIGINT
from the parent) ends it with exit status 130 and no result: an interrupted run is not a result,
and its training state lets the next launch continue it.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling(name: str, package: str = "experiments"):
    """Our standard-library-only module ``name`` (in ``experiments/``, or ``package=""`` for the
    package root): imported normally inside the package, loaded by path (under a private name, so it
    can shadow nothing of MMRec's) when run as a script. The runner_* files import their siblings
    under those private names, so the order below matters."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}" if package else f"{__package__.rsplit('.', 1)[0]}.{name}")
    private = f"_mmrec_rearm_{name}"
    if private not in sys.modules:
        folder = _HERE if package else os.path.dirname(_HERE)
        spec = importlib.util.spec_from_file_location(private, os.path.join(folder, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        spec.loader.exec_module(module)
    return sys.modules[private]


atomic = _sibling("atomic", package="")
checkpoint_format = _sibling("checkpoint_format")
mmrec_output = _sibling("mmrec_output", package="")
_events = _sibling("runner_events")
_state = _sibling("runner_state")
_fixes = _sibling("runner_fixes")
_checkpoint = _sibling("runner_checkpoint")


class _Session:
    """What the recording trainer does around MMRec's ``fit`` loop: the per-epoch events and
    history (:class:`.runner_events.EpochRecorder`), the training state after every epoch and the
    resume from it (:mod:`.runner_state`), and the best-validation checkpoint
    (:class:`.runner_checkpoint.BestKeeper`)."""

    def __init__(self, spec: dict, started: float):
        self.recorder = _events.EpochRecorder(started)
        self.keeper = _checkpoint.BestKeeper(*_checkpoint.checkpoint_target(spec))
        self.state_path = str(spec.get("state_path") or "") or None
        self.resume = bool(spec.get("resume", True))
        self.run_key = str(spec.get("run_key") or "")
        self.digest = _state.config_digest(spec.get("config_dict") or {})
        self.signature = ""
        self.data = (None, None, None)   # train, valid, test loaders as fit received them
        self.resumed_from = None
        self.first_epoch = self.next_epoch = 0
        self.epoch_began = None
        self._valid = None
        self.device = None

    # -- fit ------------------------------------------------------------------------------------
    def before_fit(self, trainer, train_data, valid_data, test_data) -> None:
        self.data = (train_data, valid_data, test_data)
        self.keeper.test_data = test_data
        self.recorder.epochs = getattr(trainer, "epochs", None)
        if self.state_path and not (all(hasattr(trainer, name) for name in ("optimizer", "start_epoch"))
                                    and callable(getattr(trainer.model, "pre_epoch_processing", None))):
            self.state_path = None  # not MMRec's Trainer and model: no states
        if self.state_path:
            self.signature = _state.data_signature(train_data)
            if self.resume and os.path.exists(self.state_path):
                self._resume(trainer, train_data)
        if self.resumed_from is None and self.keeper.path and os.path.exists(self.keeper.path):
            os.unlink(self.keeper.path)  # left by an earlier, failed attempt of this run
        self.first_epoch = self.next_epoch = int(getattr(trainer, "start_epoch", 0) or 0)
        if self.state_path:
            original = trainer.model.pre_epoch_processing

            def pre_epoch_processing(*args, **kwargs):
                self.epoch_boundary(trainer)
                return original(*args, **kwargs)
            trainer.model.pre_epoch_processing = pre_epoch_processing  # this instance only
        _events.emit({"event": "start", "mmrec_log": _events.log_file(), "device": self.device,
                      "epochs": self.recorder.epochs, "resumed_from": self.resumed_from, "state_path": self.state_path})

    def _resume(self, trainer, train_data) -> None:
        try:
            payload = _state.load(self.state_path)
            _state.check(payload, self.state_path, run_key=self.run_key, digest=self.digest, signature=self.signature)
        except _state.StateError as exc:
            _events.emit({"event": "state_ignored", "path": self.state_path,
                          "message": f"{exc}; starting from epoch 0"})
            return
        try:
            _state.restore(trainer, train_data, payload)
        except Exception as exc:  # the model or the optimiser changed shape: nothing to continue from
            raise RuntimeError(f"{self.state_path}: cannot restore this training state ({type(exc).__name__}: "
                               f"{exc}); delete the file (or run with --fresh) to start from epoch 0") from exc
        self.recorder.load_json(payload["recorder"])
        self.resumed_from = int(payload["epoch"])
        trainer.start_epoch = trainer.epochs if payload["finished"] else self.resumed_from + 1
        if self.keeper.path and os.path.exists(self.keeper.path):
            self.keeper.saved_epoch = self.recorder.best_epoch

    def epoch_boundary(self, trainer) -> None:
        """Called as MMRec begins an epoch: the previous one is complete, so its state is saved."""
        if self.next_epoch > self.first_epoch:
            self.save(trainer, self.next_epoch - 1, finished=False)
        self.next_epoch += 1
        self.epoch_began = time.time()

    def after_fit(self, trainer) -> None:
        if self.state_path and self.next_epoch > self.first_epoch and self.recorder.history:
            self.save(trainer, self.recorder.history[-1]["epoch"], finished=True)

    def save(self, trainer, epoch: int, finished: bool) -> None:
        try:
            payload = _state.capture(trainer, self.data[0], epoch=epoch, finished=finished, run_key=self.run_key,
                                     digest=self.digest, signature=self.signature,
                                     recorder_json=self.recorder.to_json())
            _state.save(self.state_path, payload)
        except Exception as exc:  # a run that cannot be resumed is still worth finishing
            message = f"training state not saved ({type(exc).__name__}: {exc}); this run cannot resume from here"
            _events.emit({"event": "state_error", "path": self.state_path, "epoch": epoch, "message": message[:500]})
            return
        _events.emit({"event": "state", "epoch": epoch, "finished": finished, "path": self.state_path})

    # -- epochs ---------------------------------------------------------------------------------
    def trained(self, trainer, epoch: int, out, began: float) -> None:
        self.keeper.epoch = epoch
        valid_data = self.data[1]
        step = int(getattr(trainer, "eval_step", 1) or 1)
        self.recorder.trained(getattr(trainer, "model", None), epoch, out, time.time() - (self.epoch_began or began),
                              evaluates=valid_data is not None and (epoch + 1) % step == 0)
        self.epoch_began = None

    def evaluated(self, trainer, eval_data, out, began: float) -> None:
        self.keeper.observe(trainer, eval_data, out[1])
        if eval_data is self.data[1]:
            self._valid = (out, began)
        elif eval_data is self.data[2] and self._valid is not None:
            (score, valid), valid_began = self._valid
            self._valid = None
            self.recorder.evaluated(trainer, score, valid, time.time() - valid_began)


def _recording_trainer(mmrec_trainer, session: _Session, captured: dict):
    class RecordingTrainer(mmrec_trainer):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            session.device = captured["device"] = str(getattr(self, "device", ""))

        def fit(self, train_data, valid_data=None, test_data=None, *args, **kwargs):
            session.before_fit(self, train_data, valid_data, test_data)
            out = super().fit(train_data, valid_data, test_data, *args, **kwargs)
            captured["fit"] = out
            session.after_fit(self)
            return out

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            began = time.time()
            out = super()._train_epoch(_events.Batches(train_data, epoch_idx), epoch_idx, *args, **kwargs)
            session.trained(self, epoch_idx, out, began)
            return out

        def _valid_epoch(self, eval_data, *args, **kwargs):
            began = time.time()
            out = super()._valid_epoch(eval_data, *args, **kwargs)
            session.evaluated(self, eval_data, out, began)
            return out

    return RecordingTrainer


def run(spec: dict) -> dict:
    started = time.time()
    result = {"status": "failed", "host": platform.node(), "python": sys.executable}
    if spec.get("state_path") and not _state.lock(str(spec["state_path"])):
        result.update(message=f"this run is being trained by another process right now ({spec['state_path']}.lock "
                              "is locked); wait for it to finish", wall_s=0.0)
        result["error"] = result["message"]
        return result
    session = _Session(spec, started)
    recorder = session.recorder
    captured = {}
    host_fixes = []
    try:
        model = spec["model"]
        if importlib.util.find_spec(f"models.{model.lower()}") is None:
            raise RuntimeError(f"MMRec has no module models/{model.lower()}.py in {os.getcwd()}; "
                               "is the model installed into this checkout?")
        import utils.quick_start as quick_start_module
        from utils.utils import get_trainer

        trainer_class = _recording_trainer(get_trainer(), session, captured)
        # Only quick_start's own references are redirected: MMRec's Trainer class and module stay
        # as they are (its methods name their class, e.g. super(Trainer, self)).
        original_get_trainer = getattr(quick_start_module, "get_trainer", None)
        if original_get_trainer is not None:
            quick_start_module.get_trainer = lambda: trainer_class
        host_fixes.extend(_fixes.apply_import_fixes(model))
        original_get_model = getattr(quick_start_module, "get_model", None)
        fixed_get_model = _fixes.wrap_get_model(original_get_model, model, host_fixes)
        if fixed_get_model is not None:
            quick_start_module.get_model = fixed_get_model
        try:
            quick_start_module.quick_start(model, spec["dataset"], dict(spec["config_dict"]),
                                           save_model=bool(spec.get("save_model")))
        finally:
            if original_get_trainer is not None:
                quick_start_module.get_trainer = original_get_trainer
            if original_get_model is not None:
                quick_start_module.get_model = original_get_model

        result["mmrec_log"] = _events.log_file()
        if "fit" in captured:
            best_score, valid, test = captured["fit"]
            result.update(valid=_events.plain_metrics(valid), test=_events.plain_metrics(test), result_source="trainer")
            never_improved = best_score is None or float(best_score) == -1
        else:
            text = open(result["mmrec_log"], encoding="utf-8", errors="replace").read() if result["mmrec_log"] else ""
            valid, test = mmrec_output.parse_final_lines(text)
            if valid is None or test is None:
                raise RuntimeError("quick_start finished but neither the trainer nor the log gave a result")
            result.update(valid=valid, test=test, result_source="log")
            never_improved = False
        result.update(device=captured.get("device"))
        keeper = session.keeper
        if keeper.saved_epoch is not None:
            result.update(checkpoint=os.path.abspath(keeper.path), checkpoint_epoch=keeper.saved_epoch)
        if keeper.error:
            result["checkpoint_error"] = keeper.error
        if never_improved:
            when = f" (loss became NaN at epoch {recorder.nan_epoch})" if recorder.nan_epoch is not None else ""
            result["message"] = f"training never produced a validated epoch{when}; metrics are MMRec's zeros"
        else:
            result["status"] = "ok"
            if recorder.nan_epoch is not None:
                result["message"] = f"loss became NaN at epoch {recorder.nan_epoch}; training stopped there"
    except KeyboardInterrupt:
        raise  # an interrupted run is not a result: no record, the next compare redoes it
    except BaseException as exc:  # record everything else, including SystemExit from a model
        missing = _events.missing_package(exc)
        result["error"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        result["missing_package"] = missing
        if missing:
            result["message"] = (f"missing Python package '{missing}' ({type(exc).__name__}: {exc}); "
                                 f"install it into {sys.executable}")
        else:
            result["message"] = f"{type(exc).__name__}: {exc}".strip()[:500]
        result.setdefault("mmrec_log", _events.log_file())
    result.update(best_epoch=recorder.best_epoch, epochs_run=len(recorder.history), history=recorder.history,
                  epoch_cap=recorder.epochs, stopped_early=recorder.stopped_early)
    if session.resumed_from is not None:
        result["resumed_from"] = session.resumed_from
    if host_fixes:
        result["host_fixes"] = host_fixes
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
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    sys.path.insert(0, os.getcwd())
    try:
        result = run(spec)
    except KeyboardInterrupt:  # Ctrl-C: the parent reports it in one line; an interrupted run has no result
        sys.stderr.write("interrupted: the run was stopped and is not recorded\n")
        return 130
    write_atomically(spec["result_path"], result)
    _events.emit({"event": "end", "status": result["status"], "message": result.get("message")})
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
