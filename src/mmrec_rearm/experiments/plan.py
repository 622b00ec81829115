"""The run plan of a comparison: every (model, configuration, seed) and its stable key.

A model's configurations are MMRec's own grid (the product of the values of its
``hyper_parameters`` keys, in MMRec's order) after ``--set`` overrides:

* ``MODEL.key=value`` applies to one model, ``key=value`` (or ``*.key=value``) to all of them;
* values are parsed as YAML with MMRec's number rules (``1e-4`` is a float, ``[64, 64]`` a list);
* on a grid key a scalar pins it (the key leaves the grid); a list, as in MMRec's YAML files,
  replaces that key's candidates; on any other key the value is passed as it is;
* a model-specific item wins over an item for all models; of two items on the same key the
  later wins;
* an integer given for a key whose YAML values are floats is turned into a float, so
  ``reg_weight=0`` and ``reg_weight=0.0`` are the same configuration.

A run key is a hash of (dataset, model, canonical configuration, seed, epochs); the
configuration id groups the seeds of one configuration (dataset, model, configuration, epochs).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from ..errors import ConfigError
from .mmrec_config import grid_keys, grid_values, merged_config, parse_yaml_text

#: Keys that the comparison itself controls; ``--set`` may not touch them.
RESERVED_KEYS = ("seed", "epochs", "hyper_parameters", "model", "dataset")

#: ``seeds=N`` runs the first N of 999, 1000, ...: 999 is MMRec's default seed, so a one-seed
#: comparison repeats MMRec's own default run.
FIRST_SEED = 999


@dataclass(frozen=True)
class Override:
    """One ``--set`` item: ``model`` is None when it applies to every model."""
    model: Optional[str]
    key: str
    value: Any
    text: str


@dataclass
class RunSpec:
    """One training run: a model, one configuration, one seed."""
    dataset: str
    model: str
    config: Dict[str, Any]
    seed: int
    epochs: Optional[int]
    key: str = field(init=False)
    config_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = run_key(self.dataset, self.model, self.config, self.seed, self.epochs)
        self.config_id = config_id(self.dataset, self.model, self.config, self.epochs)


@dataclass
class Plan:
    dataset: str
    runs: List[RunSpec]
    configs: Dict[str, List[Dict[str, Any]]]   # model -> its configurations, grid order
    valid_metric: Dict[str, str]               # model -> MMRec's valid_metric, lower case
    warnings: List[str]


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON: equal configurations give equal text whatever the key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def run_key(dataset: str, model: str, config: dict, seed: int, epochs: Optional[int]) -> str:
    """16 hex digits identifying one run; the resume logic skips a key already finished."""
    return _digest({"dataset": dataset, "model": model, "config": config, "seed": seed, "epochs": epochs})


def config_id(dataset: str, model: str, config: dict, epochs: Optional[int]) -> str:
    """16 hex digits identifying one configuration of one model (all its seeds share it)."""
    return _digest({"dataset": dataset, "model": model, "config": config, "epochs": epochs})


def seed_list(seeds: Union[int, Sequence[int]]) -> List[int]:
    """``N`` -> ``[999, ..., 999 + N - 1]``; an explicit sequence is kept (duplicates refused)."""
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds: expected a count or a list of integers, got {seeds!r}.")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds: need at least 1 seed, got {seeds}.")
        return [FIRST_SEED + i for i in range(seeds)]
    out = [int(s) for s in seeds]
    if not out:
        raise ConfigError("seeds: the list of seeds is empty; give at least one.")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds: {out} repeats a seed; each seed must appear once.")
    return out


def parse_overrides(items: Iterable[str], models: Sequence[str]) -> List[Override]:
    """Parse ``MODEL.key=value`` / ``key=value`` strings; ``MODEL`` must be one of ``models``."""
    parsed = []
    for text in items:
        if "=" not in text:
            raise ConfigError(f"--set {text!r}: expected MODEL.key=value or key=value.")
        target, raw = text.split("=", 1)
        target = target.strip()
        model: Optional[str] = None
        key = target
        if "." in target:
            model, key = target.split(".", 1)
            if model == "*":
                model = None
            elif model not in models:
                raise ConfigError(
                    f"--set {text!r}: model '{model}' is not among the compared models {list(models)} "
                    "(names are case-sensitive)."
                )
        if not key or not key.replace("_", "a").isalnum():
            raise ConfigError(f"--set {text!r}: '{key}' is not a configuration key name.")
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"--set {text!r}: '{key}' is set by the comparison itself; use the seeds / epochs "
                "arguments instead."
            )
        value = parse_yaml_text(raw, f"--set {text!r}") if raw.strip() else None
        parsed.append(Override(model, key, value, text))
    return parsed


def _is_float_key(base_value: Any) -> bool:
    values = base_value if isinstance(base_value, list) else [base_value]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(numbers) and all(isinstance(v, float) for v in numbers)


def _coerce(value: Any, base_value: Any) -> Any:
    if not _is_float_key(base_value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def model_configurations(base: dict, model: str, overrides: Sequence[Override]) -> tuple:
    """(configurations, warnings) for one model given its merged MMRec settings ``base``.

    Each configuration maps every remaining grid key to one value, plus every pinned key.
    """
    warnings: List[str] = []
    keys = grid_keys(base)
    candidates = {k: grid_values(base, k) for k in keys}
    pinned: Dict[str, Any] = {}
    # model-specific items win over items for all models, whatever their order on the command line
    for item in sorted(overrides, key=lambda o: o.model is not None):
        if item.model not in (None, model):
            continue
        if item.key not in base and item.model is not None:
            warnings.append(
                f"--set {item.text}: '{item.key}' is not in {model}'s MMRec configuration files; "
                "passing it anyway (check the spelling)."
            )
        value = _coerce(item.value, base.get(item.key))
        if item.key in candidates and isinstance(value, list):
            candidates[item.key] = list(value) or [None]
        elif item.key in candidates:
            del candidates[item.key]
            pinned[item.key] = value
        else:
            pinned[item.key] = value
    grid = [k for k in keys if k in candidates]
    configurations = []
    for combo in itertools.product(*(candidates[k] for k in grid)):
        config = dict(zip(grid, combo))
        config.update(pinned)
        configurations.append(config)
    return configurations, warnings


def build_plan(src: Path, dataset: str, models: Sequence[str], seeds: Union[int, Sequence[int]],
               epochs: Optional[int], overrides: Sequence[str] = (),
               extra_overrides: Sequence[Override] = ()) -> Plan:
    """All runs in order model -> configuration (grid order) -> seed.

    ``extra_overrides`` (already parsed, values exact, e.g. a tuned configuration) come after
    ``overrides``, so on the same key of the same model they win."""
    if not models:
        raise ConfigError("models: name at least one MMRec model to compare.")
    if len(set(models)) != len(models):
        raise ConfigError(f"models: {list(models)} names a model twice.")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs: expected a positive integer or None (MMRec's own setting), got {epochs!r}.")
    seed_values = seed_list(seeds)
    parsed = parse_overrides(overrides, models) + list(extra_overrides)
    runs: List[RunSpec] = []
    configs: Dict[str, List[dict]] = {}
    metric: Dict[str, str] = {}
    warnings: List[str] = []
    for model in models:
        base = merged_config(src, model, dataset)
        model_configs, notes = model_configurations(base, model, parsed)
        warnings.extend(notes)
        configs[model] = model_configs
        chosen = [c.get("valid_metric") for c in model_configs if c.get("valid_metric")]
        metric[model] = str(chosen[0] if chosen else base.get("valid_metric") or "Recall@20").lower()
        for config in model_configs:
            for seed in seed_values:
                runs.append(RunSpec(dataset, model, config, seed, epochs))
    return Plan(dataset, runs, configs, metric, warnings)
