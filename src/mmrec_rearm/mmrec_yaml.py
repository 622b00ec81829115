"""YAML read the way MMRec reads it: PyYAML's ``SafeLoader`` plus MMRec's rule that exponent-only
numbers (``1e-04``, as MMRec's grids are written) are floats; YAML 1.1 alone accepts an exponent
only after a dot (``1.0e-4``) and reads ``1e-04`` as a string."""
from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["MMRecYamlLoader", "load_mmrec_yaml"]

_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class MMRecYamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent-only numbers as floats, like MMRec's configurator."""


MMRecYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_mmrec_yaml(text: str) -> Any:
    """``text`` parsed with MMRec's number rules (raises ``yaml.YAMLError`` on bad syntax)."""
    return yaml.load(text, Loader=MMRecYamlLoader)
