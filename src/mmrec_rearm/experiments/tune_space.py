"""The search space of ``tune``: which configuration keys Optuna samples, over which values, and how
a sample becomes one MMRec configuration (the same one ``compare`` would build for it).

Where the space comes from, in order (a later source replaces an earlier one key by key):

1. the model's MMRec grid: every ``hyper_parameters`` key with more than one candidate after the
   ``--set`` items (read with :mod:`.mmrec_config`, reduced with :func:`.plan.model_configurations`)
   becomes a categorical over MMRec's own candidate list, in MMRec's order;
2. a space file: ``--space FILE``, or, without one, the file this package ships for the model
   (``configs/tune/<MODEL>.yaml``; REARM's MMRec grid is empty, its presets are per dataset).

A key given with ``--set`` is never searched: the pin wins over both sources.

Space file (YAML, MMRec's number rules, so ``1e-4`` is a float)::

    learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # float range (log scale)
    n_layers: {low: 1, high: 4}                              # int range (both bounds integers)
    rank: {type: int, low: 1, high: 9, step: 2}              # int range with a step
    dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}   # float grid
    reg_weight: [1.0e-4, 1.0e-3, 1.0e-2]                     # a list: categorical
    attention: {choices: [scalar, matrix]}                   # categorical, spelled out
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .mmrec_config import grid_keys, merged_config, parse_yaml_text
from .plan import RESERVED_KEYS, Override, model_configurations, parse_overrides

_FIELDS = {"type", "low", "high", "step", "log", "choices"}
_KINDS = ("float", "int", "categorical")
_PLAIN = (type(None), bool, int, float, str)


def decode(value: Any) -> Any:
    """A categorical value as Optuna stores it -> the configured value (lists travel as JSON text)."""
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def decoded(params: Dict[str, Any]) -> Dict[str, Any]:
    """A trial's ``params`` with every value as configured."""
    return {name: decode(value) for name, value in params.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Param:
    """One searched key. ``choices`` (categorical) keep the values as configured, lists included;
    ``grid``: the key is one of the model's MMRec ``hyper_parameters`` (its value then restricts the
    grid rather than adding a setting, exactly as a ``--set`` list does)."""
    name: str
    kind: str
    source: str
    grid: bool = False
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False

    def _encoded(self) -> List[Any]:
        # Optuna's categorical takes None/bool/int/float/str; other values travel as their JSON text
        return [c if isinstance(c, _PLAIN) else "json:" + json.dumps(c, sort_keys=True) for c in self.choices]

    def suggest(self, trial) -> Any:
        """Ask ``trial`` (an optuna Trial) for this key's value."""
        if self.kind == "categorical":
            return decode(trial.suggest_categorical(self.name, self._encoded()))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)
        # a stepped float is low + k * step in binary floating point (0.30000000000000004): keep 0.3
        return float(f"{value:.12g}") if self.step else value

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}: one of {list(self.choices)} ({self.source})"
        extra = (", log scale" if self.log else "") + (f", step {self.step:g}" if self.step else "")
        return f"{self.name}: {self.kind} in [{self.low:g}, {self.high:g}]{extra} ({self.source})"

    def signature(self) -> dict:
        return {"name": self.name, "kind": self.kind, "grid": self.grid, "choices": list(self.choices),
                "low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass
class SearchSpace:
    """The searched keys of one model on one dataset, and how a sample becomes a configuration."""
    model: str
    base: Dict[str, Any]
    overrides: List[Override]
    params: Dict[str, Param]
    warnings: List[str] = field(default_factory=list)

    def config(self, values: Dict[str, Any]) -> Dict[str, Any]:
        """The one MMRec configuration of a sample: :func:`.plan.model_configurations` with the
        ``--set`` items followed by the sampled values (grid keys as one-element candidate lists)."""
        sampled = [Override(self.model, name, [value] if self.params[name].grid else value,
                            f"{self.model}.{name}={value!r}") for name, value in values.items()]
        configs, _ = model_configurations(self.base, self.model, list(self.overrides) + sampled)
        if len(configs) != 1:  # a grid key neither searched nor pinned would make several
            raise ConfigError(f"tune: a sample of {self.model} gave {len(configs)} configurations; report this.")
        return configs[0]

    def signature(self) -> List[dict]:
        return [p.signature() for p in self.params.values()]


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise ConfigError(f"{where}: {name!r} is not a configuration key name.")
    if name in RESERVED_KEYS:
        raise ConfigError(f"{where}: '{name}' is set by tune itself (use --seed / --epochs), not searched.")
    return name


def parse_param(name: str, entry: Any, where: str, grid: bool = False, source: Optional[str] = None) -> Param:
    """One entry of a space file -> :class:`Param`; every problem is a :class:`ConfigError` naming
    ``where`` (file and key), the field and the value."""
    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a list of values or a mapping with low/high or choices, "
                          f"got {entry!r}.")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}.")
    kind = entry.get("type") or ("categorical" if "choices" in entry else None)
    if "choices" in entry:
        choices = entry["choices"]
        if kind != "categorical" or any(k in entry for k in ("low", "high", "step", "log")):
            raise ConfigError(f"{where}: 'choices' makes a categorical; it takes no type {kind!r}, low, high, "
                              "step or log.")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}.")
        texts = [json.dumps(c, sort_keys=True, default=str) for c in choices]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{where}: choices {choices} repeat a value; list each once.")
        return Param(name, "categorical", source or where, grid=grid, choices=tuple(choices))
    if kind == "categorical":
        raise ConfigError(f"{where}: type categorical needs 'choices: [...]'.")
    for key in ("low", "high"):
        if key not in entry:
            raise ConfigError(f"{where}: a range needs 'low' and 'high' (or give a list of choices).")
        if not _is_number(entry[key]):
            raise ConfigError(f"{where}: {key} must be a number, got {entry[key]!r}.")
    low, high, step, log = entry["low"], entry["high"], entry.get("step"), entry.get("log", False)
    if kind is None:
        kind = "int" if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)) \
            else "float"
    if kind not in _KINDS:
        raise ConfigError(f"{where}: type {kind!r} is not one of {list(_KINDS)}.")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}.")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}).")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got low={low}.")
    if step is not None:
        if not _is_number(step) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive number, got {step!r}.")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined (Optuna samples one or the other).")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int range needs integer low/high/step, got {low}, {high}, {step}.")
    return Param(name, kind, source or where, grid=grid, low=low, high=high, step=step, log=log)


def read_space_file(path: Path, grid: Sequence[str] = ()) -> Dict[str, Param]:
    """A space file (format: module docstring) -> key -> :class:`Param`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search space file not found; give a YAML file of ranges (see docs/tuning.md).")
    data = parse_yaml_text(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of configuration key -> range or list of values, "
                          f"got {type(data).__name__}.")
    return {_check_name(name, f"{path}: key {name!r}"): parse_param(name, entry, f"{path}: {name}", name in grid,
                                                                    source=path.name)
            for name, entry in data.items()}


def shipped_space_file(model: str) -> Optional[Path]:
    """``configs/tune/<model>.yaml`` of this package, when it ships one."""
    from ..install import package_configs_dir

    path = package_configs_dir() / "tune" / f"{model}.yaml"
    return path if path.is_file() else None


def build_space(src: Path, model: str, dataset: str, overrides: Sequence[str] = (),
                space_file: Optional[Path] = None) -> SearchSpace:
    """The search space of ``model`` on ``dataset`` (module docstring); :class:`ConfigError` when
    nothing is left to search."""
    base = merged_config(src, model, dataset)
    parsed = parse_overrides(overrides, [model])
    configs, warnings = model_configurations(base, model, parsed)
    grid = grid_keys(base)
    params: Dict[str, Param] = {}
    for key in grid:
        values: List[Any] = []
        for config in configs:
            if key in config and config[key] not in values:
                values.append(config[key])
        if len(values) > 1:
            params[key] = Param(key, "categorical", "MMRec grid", grid=True, choices=tuple(values))
    file = Path(space_file) if space_file is not None else shipped_space_file(model)
    pinned = {o.key for o in parsed if o.model in (None, model)}
    if file is not None:
        for name, param in read_space_file(file, grid).items():
            if name in pinned:
                warnings.append(f"{file}: '{name}' is pinned by --set; not searched.")
                continue
            if name not in base:
                warnings.append(f"{file}: '{name}' is not in {model}'s MMRec configuration files; "
                                "searching it anyway (check the spelling).")
            params[name] = param
    if not params:
        raise ConfigError(
            f"tune: nothing to search for {model} on {dataset}: its MMRec hyper_parameters "
            f"{grid or '[]'} leave no key with two or more candidates"
            + (f" after --set {[o.text for o in parsed]}" if parsed else "")
            + (f" and {file} adds none" if file else "")
            + "; give a space file (--space FILE, format in docs/tuning.md).")
    return SearchSpace(model, base, parsed, params, warnings)
