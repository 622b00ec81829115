"""REARM's settings: per-dataset presets, the rule that fills the dataset-dependent configuration
keys, and :func:`read_settings`, which validates every model key of configs/model/REARM.yaml.

The values are the command lines of the official README (github MrShouxingMa/REARM) for Baby,
Sports and Clothing, under our key names (official flag in the comment). The learning rate is not
listed: the README never sets it, so every dataset uses the parser default 5e-5 (REARM.yaml).

Rule (:func:`resolve`), per key of :data:`PRESET_KEYS`:

1. a non-null value in the MMRec configuration (``config_dict`` / command line, or the model YAML
   if someone writes one there) wins;
2. else a value written in the dataset YAML (``configs/dataset/<dataset>.yaml`` in MMRec's working
   directory). MMRec reads the model YAML *after* the dataset YAML, so a ``~`` in REARM.yaml would
   hide the dataset YAML's value; we therefore look it up there ourselves;
3. else the preset of the dataset when its name is known (``baby``, ``sports``, ``clothing``,
   case-insensitive), else the Baby preset (the log says so).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ConfigError

__all__ = ["PRESETS", "PRESET_KEYS", "FALLBACK_PRESET", "ResolvedSettings", "resolve",
           "read_dataset_yaml", "describe", "RearmSettings", "read_settings", "ABLATIONS",
           "OFFICIAL_FLAGS", "refuse_flag_names", "check_scalar", "check_number", "check_flag", "check_choice"]

#: key -> (baby, sports, clothing); the official flag is named in the comment.
_TABLE: Dict[str, Tuple[Any, Any, Any]] = {
    "n_layers": (4, 5, 4),                      # --num_layer
    "n_uu_layers": (1, 2, 1),                   # --n_uu_layers
    "n_ii_layers": (1, 2, 1),                   # --n_ii_layers
    "rank": (3, 7, 3),                          # --rank
    "self_attn_dropout": (0.4, 1.0, 0.4),       # --s_drop
    "cross_attn_dropout": (0.6, 0.2, 0.1),      # --m_drop
    "cl_temperature": (0.6, 1.5, 0.03),         # --cl_tmp
    "cl_loss_weight": (5e-6, 1e-3, 1e-6),       # --cl_loss_weight
    "ort_loss_weight": (5e-5, 5e-4, 1e-5),      # --diff_loss_weight
    "reg_weight": (5e-4, 0.05, 1e-5),           # --reg_weight (AdamW weight decay)
    "user_knn_k": (40, 25, 45),                 # --user_knn_k (also the user co-occurrence k)
    "item_knn_k": (10, 5, 10),                  # --item_knn_k (also the item co-occurrence k)
    "u_mm_image_weight": (0.2, 0.0, 0.1),       # --u_mm_image_weight
    "i_mm_image_weight": (0.0, 0.2, 0.1),       # --i_mm_image_weight
    "uu_co_weight": (0.4, 0.9, 0.7),            # --uu_co_weight
    "ii_co_weight": (0.2, 0.2, 0.1),            # --ii_co_weight
}

#: The configuration keys whose default depends on the dataset.
PRESET_KEYS: Tuple[str, ...] = tuple(_TABLE)
#: preset name -> {key: value}
PRESETS: Dict[str, Dict[str, Any]] = {
    name: {key: values[i] for key, values in _TABLE.items()}
    for i, name in enumerate(("baby", "sports", "clothing"))
}
#: Used for a dataset without a preset.
FALLBACK_PRESET = "baby"


@dataclass(frozen=True)
class ResolvedSettings:
    """The dataset-dependent values and where each came from."""

    values: Dict[str, Any]
    preset: str                      # name of the preset used for the keys not set elsewhere
    known_dataset: bool              # False: the dataset has no preset, the fallback was used
    origin: Dict[str, str] = field(default_factory=dict)  # key -> "config" | "dataset yaml" | "preset"


def read_dataset_yaml(dataset: Optional[str], configs_dir: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """The mapping in ``<configs_dir>/dataset/<dataset>.yaml`` (``configs_dir`` default: MMRec's
    ``<cwd>/configs``), or ``{}`` when there is no such file or it cannot be parsed (MMRec itself
    would already have failed on a broken file)."""
    if not dataset:
        return {}
    base = Path(configs_dir) if configs_dir is not None else Path(os.getcwd()) / "configs"
    path = base / "dataset" / f"{dataset}.yaml"
    if not path.is_file():
        return {}
    try:
        from ..mmrec_yaml import load_mmrec_yaml

        data = load_mmrec_yaml(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - unreadable here means: no dataset-level values
        return {}
    return data if isinstance(data, dict) else {}


def resolve(get: Callable[[str], Any], dataset: Optional[str],
            dataset_yaml: Optional[Mapping[str, Any]] = None, *,
            presets: Optional[Mapping[str, Mapping[str, Any]]] = None, fallback: Optional[str] = None,
            model: str = "REARM") -> ResolvedSettings:
    """Fill the preset keys by the rule of this module.

    ``get(key)`` returns the configuration's value or None; ``dataset_yaml`` the dataset YAML's
    mapping (default: :func:`read_dataset_yaml`). ``presets`` (preset name -> {key: value}, every
    preset with the same keys), ``fallback`` and ``model`` (the YAML named in messages) default to
    REARM's; other models (the baselines) pass their own table.
    """
    presets = PRESETS if presets is None else presets
    fallback = FALLBACK_PRESET if fallback is None else fallback
    name = (dataset or "").lower()
    known = name in presets
    preset = name if known else fallback
    if dataset_yaml is None:
        dataset_yaml = read_dataset_yaml(dataset)
    values, origin = {}, {}
    for key in presets[fallback]:
        value = get(key)
        if value is not None:
            values[key], origin[key] = value, "config"
        elif dataset_yaml.get(key) is not None:
            if isinstance(dataset_yaml[key], (list, tuple)):
                raise ConfigError(
                    f"configs/dataset/{dataset}.yaml gives '{key}' the list {list(dataset_yaml[key])}: "
                    f"MMRec reads {model}.yaml after the dataset YAML, and its '{key}: ~' hides such a "
                    f"grid. Put the list and hyper_parameters in {model}.yaml or in config_dict instead.")
            values[key], origin[key] = dataset_yaml[key], "dataset yaml"
        else:
            values[key], origin[key] = presets[preset][key], "preset"
    return ResolvedSettings(values, preset, known, origin)


def describe(resolved: ResolvedSettings, dataset: Optional[str], model: str = "REARM") -> str:
    """One log line: the preset applied and every dataset-dependent key=value with its origin."""
    if resolved.known_dataset:
        head = f"{model} preset '{resolved.preset}' for dataset '{dataset}'"
    else:
        head = (f"{model}: no preset for dataset '{dataset}', using the '{resolved.preset}' preset "
                "for unset keys")
    parts = []
    for key in resolved.values:
        mark = "" if resolved.origin[key] == "preset" else f" ({resolved.origin[key]})"
        parts.append(f"{key}={resolved.values[key]}{mark}")
    return f"{head}: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Reading and validating the model configuration

#: Table 3 variants. ``wo_ort`` drops only the orthogonal loss and ``wo_meta`` only the
#: meta-network branch; ``wo_ref`` ("no refinement") drops both, leaving plain contrastive learning.
ABLATIONS = ("none", "wo_uu", "wo_ii", "wo_co", "wo_sim", "wo_hom", "wo_meta", "wo_ort", "wo_ref")
ATTENTION_FORMS = ("scalar", "matrix")
WEIGHT_DECAY_MODES = ("decoupled", "coupled", "l2")

#: Official command-line flags that differ from our key names -> our key (refused with a hint,
#: so that a value given under the official name is never silently ignored).
OFFICIAL_FLAGS = {
    "num_layer": "n_layers",
    "s_drop": "self_attn_dropout",
    "m_drop": "cross_attn_dropout",
    "cl_tmp": "cl_temperature",
    "diff_loss_weight": "ort_loss_weight",
    "l_r": "learning_rate",
    "embedding_dim": "embedding_size",
}

#: Graph keys passed to GraphParams.from_mapping (our key -> GraphParams field).
GRAPH_KEYS = {
    "user_knn_k": "user_knn_k", "item_knn_k": "item_knn_k",
    "u_mm_image_weight": "u_mm_image_weight", "i_mm_image_weight": "i_mm_image_weight",
    "uu_co_weight": "uu_co_weight", "ii_co_weight": "ii_co_weight",
    "u_modal_weights": "u_modal_weights", "i_modal_weights": "i_modal_weights",
    "cooc_padding": "cooc_padding", "cooc_empty": "cooc_empty", "knn_self": "knn_self",
    "graph_seed": "seed",
}


@dataclass(frozen=True)
class RearmSettings:
    """Every model setting after defaults, presets and validation (see configs/model/REARM.yaml)."""

    dataset: str
    preset: ResolvedSettings
    embedding_size: int
    n_layers: int
    n_uu_layers: int
    n_ii_layers: int
    rank: int
    self_attn_dropout: float
    cross_attn_dropout: float
    cl_temperature: float
    cl_loss_weight: float
    ort_loss_weight: float
    reg_weight: float
    attention: str
    train_raw_features: bool
    meta_input_grad: bool
    weight_decay_mode: str
    ablation: str
    modalities: Union[str, Tuple[int, ...]]
    extra_feature_files: Tuple[str, ...]
    learning_rate: float
    lr_scheduler: Tuple[float, float]
    host_weight_decay: float
    cache_dir: Any
    graph: Dict[str, Any]
    malloc_mmap_threshold_mb: float = 0.0

    @property
    def use_user_graph(self) -> bool:
        return self.ablation not in ("wo_uu", "wo_hom")

    @property
    def use_item_graph(self) -> bool:
        return self.ablation not in ("wo_ii", "wo_hom")

    @property
    def use_meta(self) -> bool:
        return self.ablation not in ("wo_meta", "wo_ref")

    @property
    def effective_ort_weight(self) -> float:
        return 0.0 if self.ablation in ("wo_ort", "wo_ref") else self.ort_loss_weight

    def summary(self) -> str:
        """One log line with the non-preset model settings."""
        return (f"REARM settings: embedding_size={self.embedding_size}, attention={self.attention}, "
                f"train_raw_features={self.train_raw_features}, meta_input_grad={self.meta_input_grad}, "
                f"weight_decay_mode={self.weight_decay_mode}, ablation={self.ablation}, "
                f"modalities={self.modalities}, learning_rate={self.learning_rate}, "
                f"graph={self.graph}")


# The validators below are shared with the baselines (mmrec_rearm.baselines.settings); ``model``
# names the YAML in their messages.


def refuse_flag_names(get: Callable[[str], Any], flags: Mapping[str, str], model: str = "REARM",
                      whose: str = "the official code's") -> None:
    """Raise a ConfigError if a key of ``flags`` (another code's flag name -> our key) is set, so
    that a value given under that name is never silently ignored."""
    for flag, ours in flags.items():
        if flag != ours and get(flag) is not None:
            raise ConfigError(
                f"{model} config key '{flag}' is {whose} flag name; this model reads "
                f"'{ours}' instead. Rename the key (value {get(flag)!r}).")


def check_scalar(key: str, value: Any, model: str = "REARM") -> Any:
    """``value`` itself; a list (an MMRec grid given as one value) is a ConfigError."""
    if isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{model} config key '{key}' has the list value {list(value)}; a model gets one value per "
            f"run. To grid-search it, list '{key}' in hyper_parameters (MMRec then passes each value "
            "in turn); otherwise give a single value.")
    return value


def check_number(key: str, value: Any, kind: type, low: float, high: float = float("inf"),
                 low_open: bool = False, model: str = "REARM") -> Any:
    """``value`` as ``kind`` (int or float) within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    value = check_scalar(key, value, model)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{model} config key '{key}' must be a number, got {value!r}.")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{model} config key '{key}' must be an integer, got {value!r}.")
        value = int(value)
    else:
        value = float(value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ConfigError(f"{model} config key '{key}' must lie in {bounds}, got {value!r}.")
    return value


def check_flag(key: str, value: Any, model: str = "REARM") -> bool:
    """A bool (or the strings true / false)."""
    value = check_scalar(key, value, model)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{model} config key '{key}' must be true or false, got {value!r}.")


def check_choice(key: str, value: Any, choices: Sequence[str], model: str = "REARM") -> str:
    """One of ``choices`` (case-insensitive), lower-cased."""
    value = check_scalar(key, value, model)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{model} config key '{key}' must be one of {', '.join(choices)}; got {value!r}.")
    return value.lower()


def _modalities(value: Any) -> Union[str, Tuple[int, ...]]:
    if isinstance(value, str):
        if value.lower() in ("all", "first", "second"):
            return value.lower()
    elif isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"REARM config key 'modalities' repeats an index: {list(value)}.")
        return tuple(int(v) for v in value)
    raise ConfigError(
        f"REARM config key 'modalities' must be 'all', 'first', 'second' or a list of 0-based "
        f"modality indices (0 = vision slot, 1 = text slot, 2.. = extra_feature_files); got {value!r}.")


def _number_list(key: str, value: Any) -> Tuple[float, ...]:
    """``value`` as a tuple of floats (one weight per modality), else ConfigError naming ``key``."""
    if isinstance(value, (list, tuple)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return tuple(float(x) for x in value)
    raise ConfigError(f"{key}={value!r}: expected a list of numbers, one weight per modality "
                      f"(YAML, e.g. {key}=[0.5,0.5]).")


def read_settings(config: Any, get: Callable[[str, Any], Any],
                  dataset_yaml: Optional[Mapping[str, Any]] = None) -> RearmSettings:
    """Validated :class:`RearmSettings` from an MMRec ``Config`` (or a mapping).

    ``get(key, default)`` reads one key (None = absent). Raises ConfigError naming the key, the
    value and the fix.
    """
    refuse_flag_names(lambda key: get(key, None), OFFICIAL_FLAGS, "REARM", "the official code's")
    dataset = str(get("dataset", "") or "")
    resolved = resolve(lambda key: get(key, None), dataset, dataset_yaml)
    v = resolved.values
    ablation = check_choice("ablation", get("ablation", "none"), ABLATIONS)
    graph: Dict[str, Any] = {}
    for key, field_name in GRAPH_KEYS.items():
        value = v[key] if key in v else get(key, None)
        if value is not None:
            graph[field_name] = value if key.endswith("modal_weights") else check_scalar(key, value)
    for key in ("u_modal_weights", "i_modal_weights"):
        if key in graph:
            graph[key] = _number_list(key, graph[key])
    if ablation == "wo_co":
        graph["uu_co_weight"] = graph["ii_co_weight"] = 0.0
    elif ablation == "wo_sim":
        graph["uu_co_weight"] = graph["ii_co_weight"] = 1.0
    scheduler = get("learning_rate_scheduler", [1.0, 50])
    if not (isinstance(scheduler, (list, tuple)) and len(scheduler) == 2):
        raise ConfigError(f"learning_rate_scheduler must be [factor, step], got {scheduler!r}.")
    extra = get("extra_feature_files", None) or ()
    if isinstance(extra, str):
        extra = (extra,)
    if not all(isinstance(x, str) and x for x in extra):
        raise ConfigError(f"REARM config key 'extra_feature_files' must be a list of file names, got {extra!r}.")
    cache_dir = get("rearm_cache_dir", None)
    if not (cache_dir is None or cache_dir is False or isinstance(cache_dir, (str, os.PathLike))):
        raise ConfigError(f"REARM config key 'rearm_cache_dir' must be a folder, false or ~, got {cache_dir!r}.")
    return RearmSettings(
        dataset=dataset,
        preset=resolved,
        embedding_size=check_number("embedding_size", get("embedding_size", 64), int, 1),
        n_layers=check_number("n_layers", v["n_layers"], int, 0),
        n_uu_layers=check_number("n_uu_layers", v["n_uu_layers"], int, 0),
        n_ii_layers=check_number("n_ii_layers", v["n_ii_layers"], int, 0),
        rank=check_number("rank", v["rank"], int, 1),
        self_attn_dropout=check_number("self_attn_dropout", v["self_attn_dropout"], float, 0.0, 1.0),
        cross_attn_dropout=check_number("cross_attn_dropout", v["cross_attn_dropout"], float, 0.0, 1.0),
        cl_temperature=check_number("cl_temperature", v["cl_temperature"], float, 0.0, low_open=True),
        cl_loss_weight=check_number("cl_loss_weight", v["cl_loss_weight"], float, 0.0),
        ort_loss_weight=check_number("ort_loss_weight", v["ort_loss_weight"], float, 0.0),
        reg_weight=check_number("reg_weight", v["reg_weight"], float, 0.0),
        attention=check_choice("attention", get("attention", "scalar"), ATTENTION_FORMS),
        train_raw_features=check_flag("train_raw_features", get("train_raw_features", True)),
        meta_input_grad=check_flag("meta_input_grad", get("meta_input_grad", False)),
        weight_decay_mode=check_choice("weight_decay_mode", get("weight_decay_mode", "decoupled"),
                                  WEIGHT_DECAY_MODES),
        ablation=ablation,
        modalities=_modalities(get("modalities", "all")),
        extra_feature_files=tuple(extra),
        learning_rate=check_number("learning_rate", get("learning_rate", 5e-5), float, 0.0),
        lr_scheduler=(float(scheduler[0]), float(scheduler[1])),
        host_weight_decay=check_number("weight_decay", get("weight_decay", 0.0), float, 0.0),
        cache_dir=cache_dir,
        graph=graph,
        malloc_mmap_threshold_mb=check_number("malloc_mmap_threshold_mb", get("malloc_mmap_threshold_mb", 4),
                                         float, 0.0, 32.0),
    )
