"""params.yaml -> frozen dataclasses, one per stage section.

The dataclasses carry no defaults: params.yaml is the single source of values,
and a missing or unknown key is a clear error naming the section.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")
PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def section(cls: type[T], values: Mapping[str, Any], name: str) -> T:
    """Build dataclass ``cls`` from a params section, rejecting unknown/missing keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    missing = names - set(values)
    if unknown or missing:
        raise ValueError(
            f"params section {name!r}: unknown keys {sorted(unknown)}; missing keys {sorted(missing)}"
        )
    return cls(**values)
