"""A baseline's settings: the keys of its configs/model/<Model>.yaml, read one at a time with a
default, validated, and kept for the log.

Validation is REARM's (:mod:`mmrec_rearm.model.presets`: a wrong type or range, or a grid list
given as one value, is a :class:`~mmrec_rearm.errors.ConfigError` naming the model, the key, the
value and the fix). Dataset-dependent defaults (the authors' per-dataset settings) follow REARM's
preset rule, :func:`~mmrec_rearm.model.presets.resolve`: the run's config, else the dataset YAML,
else the dataset's preset, else the ``fallback`` preset.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..host import config_value
from ..model.presets import (ResolvedSettings, check_choice, check_flag, check_number, check_scalar, describe,
                             refuse_flag_names, resolve)

__all__ = ["Settings"]


class Settings:
    """Typed access to one model's configuration keys (MMRec ``Config`` or a mapping).

    ``official_names``: the authors' flag -> our key; a value under the authors' name is refused
    with the name to use. ``presets``: preset (dataset) name -> {key: value} for the
    dataset-dependent keys, ``fallback`` the preset of an unknown dataset. Every value read is
    kept in :attr:`values` (:meth:`summary` logs them).
    """

    def __init__(self, config: Any, model: str, *, official_names: Optional[Mapping[str, str]] = None,
                 presets: Optional[Mapping[str, Mapping[str, Any]]] = None, fallback: str = "baby"):
        self.model = model
        self.config = config
        refuse_flag_names(self.raw, official_names or {}, model, "the authors'")
        self.dataset = str(self.raw("dataset") or "")
        self.resolved: Optional[ResolvedSettings] = (
            resolve(self.raw, self.dataset, presets=presets, fallback=fallback, model=model) if presets else None)
        self.values: Dict[str, Any] = {}

    def raw(self, key: str) -> Any:
        """The configured value of ``key`` (not validated, presets not applied) or None."""
        return config_value(self.config, key, None)

    def get(self, key: str, default: Any = None) -> Any:
        """The configured value of ``key`` or ``default``."""
        return config_value(self.config, key, default)

    def _value(self, key: str, default: Any) -> Any:
        if self.resolved is not None and key in self.resolved.values:
            return self.resolved.values[key]
        value = self.raw(key)
        return default if value is None else value

    def _keep(self, key: str, value: Any) -> Any:
        self.values[key] = value
        return value

    def _numeric(self, key: str, default: Any) -> Any:
        value = self._value(key, default)
        if isinstance(value, str):  # a value quoted in YAML or passed as text on a command line
            try:
                value = float(value)
            except ValueError:
                pass
        return value

    def integer(self, key: str, default: Any, low: float = 0, high: float = float("inf")) -> int:
        """An integer within ``[low, high]``."""
        return self._keep(key, check_number(key, self._numeric(key, default), int, low, high, model=self.model))

    def real(self, key: str, default: Any, low: float = 0.0, high: float = float("inf"),
             low_open: bool = False) -> float:
        """A float within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
        return self._keep(key, check_number(key, self._numeric(key, default), float, low, high, low_open,
                                            model=self.model))

    def rate(self, key: str, default: float) -> float:
        """A dropout rate in [0, 1)."""
        value = self.real(key, default, 0.0, 1.0)
        if value >= 1.0:
            raise ConfigError(f"{self.model} config key '{key}' is a dropout rate and must lie in "
                              f"[0, 1), got {value!r}.")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self._keep(key, check_flag(key, self._value(key, default), model=self.model))

    def choice(self, key: str, default: Any, choices: Sequence[str]) -> str:
        return self._keep(key, check_choice(key, self._value(key, default), choices, model=self.model))

    def int_list(self, key: str, default: Sequence[int], low: int = 1, allow_empty: bool = False) -> Tuple[int, ...]:
        """A list of integers >= ``low`` (MMRec passes YAML lists through unchanged); one integer
        counts as a list of one."""
        value = self._value(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, (list, tuple)) or (not value and not allow_empty)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value)):
            raise ConfigError(f"{self.model} config key '{key}' must be a list of integers >= {low}, "
                              f"got {value!r}.")
        return self._keep(key, tuple(int(v) for v in value))

    def optional_path(self, key: str) -> Any:
        """A folder, ``False`` (no cache) or None (default location)."""
        value = check_scalar(key, self.raw(key), self.model)
        if not (value is None or value is False or isinstance(value, str)):
            raise ConfigError(f"{self.model} config key '{key}' must be a folder, false or ~, got {value!r}.")
        return self._keep(key, value)

    def summary(self) -> str:
        """Log lines: the preset applied (if any) and every setting read so far."""
        head = describe(self.resolved, self.dataset, self.model) + "\n" if self.resolved else ""
        return head + f"{self.model} settings: " + ", ".join(f"{k}={v}" for k, v in self.values.items())
