"""The checkpoint file format: its constants, the fields of each kind of payload, and the check of a
payload as it was loaded. The one description shared by the writer (:mod:`.runner`, inside MMRec's
process) and the reader (:mod:`.checkpoints`).

A checkpoint is a ``dict`` saved with ``torch.save`` that holds only what ``torch.load(...,
weights_only=True)`` accepts: tensors, and str / int / float / bool / None in dicts and lists
(configuration and metrics go through JSON first, :func:`json_plain`). Nothing in it needs code to
be rebuilt, so it is never loaded any other way.

Fields of every payload: ``format`` (:data:`FORMAT`), ``version`` (:data:`VERSION`), ``kind`` (a key
of :data:`FIELDS`). A kind lists the further fields it requires and their types; adding a kind means
adding one entry to :data:`FIELDS`. Version 1 files have no ``kind`` (they are :data:`KIND_BEST`) and
no ``data_fingerprint``. The kinds:

* :data:`KIND_BEST`: the weights of a run's best validation epoch and what rebuilds the model
  (written by :mod:`.runner_checkpoint`, read by :mod:`.checkpoints`);
* :data:`KIND_STATE`: a run's whole training state after an epoch, from which an interrupted run
  continues bit for bit (written and read by :mod:`.runner_state`).

Only the standard library is imported: the runner, started by path inside MMRec's process without
this package on ``sys.path``, loads this file directly.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

FORMAT = "mmrec-rearm-checkpoint"
VERSION = 2
#: The weights of the best validation epoch of a run, with what is needed to rebuild the model.
KIND_BEST = "best-validation"
#: The training state of a run after an epoch (model, optimiser, scheduler, trainer, RNGs, loader order).
KIND_STATE = "training-state"

_INT = (int,)
_NUMBER = (int, float)
_OPTIONAL = type(None)
#: kind -> required field -> accepted types. ``state_dict`` is checked separately (tensors).
FIELDS: Dict[str, Dict[str, Tuple[type, ...]]] = {
    KIND_BEST: {
        "model": (str,),
        "config": (dict,),
        "dataset_folder": (str,),
        # sha256 hex of the training data (cache.data_fingerprint); None: the model reports none
        "data_fingerprint": (str, _OPTIONAL),
        "n_users": _INT,
        "n_items": _INT,
        "epoch": (int, _OPTIONAL),
        "valid": (dict,),
        "test": (dict,),
        "state_dict": (dict,),
    },
    KIND_STATE: {
        "run_key": (str,),
        "config_digest": (str,),          # the run's settings (where it runs left out)
        "data_signature": (str,),         # the training rows, order-free
        "epoch": _INT,                    # the last finished epoch
        "finished": (bool,),              # MMRec's loop had ended
        "state_dict": (dict,),
        "model_extra": (dict, _OPTIONAL),  # the model's resume_state(), if it has one
        "optimizer": (dict,),
        "lr_scheduler": (dict, _OPTIONAL),
        "trainer": (dict,),               # early stopping counters and best results so far
        "rng": (dict,),
        "train_order": (dict,),
        "recorder": (str,),               # the runner's per-epoch history, JSON text
    },
}
#: Fields a version-1 file carries (no kind, no fingerprint).
_V1_FIELDS = ("model", "config", "dataset_folder", "state_dict", "epoch", "valid", "test")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def json_plain(value: Any) -> Any:
    """``value`` as JSON gives it back (a torch.device or any other object becomes its string), so
    the payload loads with ``weights_only=True``."""
    return json.loads(json.dumps(value, default=str))


def payload(kind: str, **fields: Any) -> Dict[str, Any]:
    """A payload of ``kind`` with ``fields`` plus format, version and kind; checked like a loaded one
    (raises ValueError listing the problems), so a bad payload is never written."""
    out = {"format": FORMAT, "version": VERSION, "kind": kind, **fields}
    found = problems(out)
    if found:
        raise ValueError("checkpoint payload: " + "; ".join(found))
    return out


def kind_of(loaded: Mapping[str, Any]) -> str:
    return str(loaded.get("kind") or KIND_BEST)


def problems(loaded: Any, expected_kind: Optional[str] = None) -> List[str]:
    """What is wrong with ``loaded`` as a checkpoint payload (empty when nothing is); messages name
    the field. A file of a newer version is one problem ("newer than this package reads")."""
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        return [f"not an mmrec-rearm checkpoint (no format '{FORMAT}')"]
    version = loaded.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return [f"field 'version' is {version!r}, not a positive integer"]
    if version > VERSION:
        return [f"checkpoint version {version} is newer than this package reads ({VERSION}); upgrade mmrec-rearm"]
    kind = kind_of(loaded)
    if kind not in FIELDS:
        return [f"field 'kind' is {kind!r}, not one of {sorted(FIELDS)}"]
    if expected_kind is not None and kind != expected_kind:
        return [f"field 'kind' is {kind!r} where a {expected_kind!r} file is needed"]
    required = FIELDS[kind] if version >= 2 else {name: FIELDS[kind][name] for name in _V1_FIELDS}
    found = []
    missing = [name for name in required if name not in loaded]
    if missing:
        found.append(f"lacks field(s) {', '.join(missing)}")
    for name, types in required.items():
        if name in loaded and (not isinstance(loaded[name], types) or (isinstance(loaded[name], bool)
                                                                         and bool not in types)):
            found.append(f"field '{name}' is a {type(loaded[name]).__name__}, expected {'/'.join(t.__name__ for t in types)}")
    fingerprint = loaded.get("data_fingerprint")
    if isinstance(fingerprint, str) and not _FINGERPRINT.fullmatch(fingerprint):
        found.append("field 'data_fingerprint' is not a sha256 hex digest")
    state = loaded.get("state_dict")
    if isinstance(state, dict):
        odd = [key for key, value in state.items() if not isinstance(key, str) or not hasattr(value, "shape")]
        if odd:
            found.append(f"state_dict entries {odd[:3]!r} are not named tensors")
    for name in ("valid", "test"):
        metrics = loaded.get(name)
        if isinstance(metrics, dict) and not all(isinstance(v, _NUMBER) and not isinstance(v, bool)
                                                 for v in metrics.values()):
            found.append(f"field '{name}' holds values that are not numbers")
    return found
