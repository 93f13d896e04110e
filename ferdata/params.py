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
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run from the project folder (the one with params.yaml) "
                                f"or pass --params PATH")
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


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` from the command line as a dict, each value read as YAML
    (``exclude_classes=[Contempt]`` -> a list, ``frames=3`` -> an int)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. exclude_classes=[Contempt]")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{item!r}: the value is not YAML ({err})") from None
    return out
