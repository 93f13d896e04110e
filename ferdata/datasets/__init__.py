"""Dataset readers, registered by name. Importing this package registers them all."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ferdata.datasets.base import COMMON_OPTIONS, READERS, DatasetLayoutError, DatasetReader, open_reader
from ferdata.datasets import affectnet, ckplus, expw, fer2013, folder, jaffe, rafdb, sfew  # noqa: F401  (registers)
from ferdata.errors import NamedKeyError
from ferdata.params import dataset_specs, section
from ferdata.records import Dropped, FaceRecord

log = logging.getLogger(__name__)

__all__ = ["COMMON_OPTIONS", "READERS", "DatasetLayoutError", "DatasetReader", "DatasetSpec", "check_reader",
           "dataset_spec", "official_splits", "open_reader", "read_dataset", "source", "warn_absolute_root"]


@dataclass(frozen=True)
class DatasetSpec:
    """A params.yaml ``datasets`` entry: which reader, where, with which options, and (optional)
    ``detect``: this dataset's values over the ``detect`` section (``{backend: precropped}`` for
    FER2013's 48 px crops beside RAF-DB's photos in one params.yaml)."""

    reader: str
    root: str
    options: dict
    detect: dict = field(default_factory=dict)


def dataset_spec(params: Mapping[str, Any], name: str, build: bool = True) -> DatasetSpec:
    """Dataset ``name``'s params.yaml entry, its reader built (``build``: its name and option names
    checked, no file opened) unless a caller builds it with options of its own over the entry's."""
    specs = dataset_specs(params)
    if name not in specs:
        raise NamedKeyError(f"dataset {name!r} is not in params.yaml datasets (known: {', '.join(sorted(specs))})")
    entry = specs[name]
    if not isinstance(entry, Mapping):
        raise ValueError(f"params.yaml datasets.{name} must be a mapping (reader, root, options), got {entry!r}")
    spec = section(DatasetSpec, {**entry, "detect": entry.get("detect") or {},           # `detect:` left empty
                                 "options": entry.get("options") or {}}, f"datasets.{name}")
    if not isinstance(spec.reader, str) or not isinstance(spec.root, str) or not isinstance(spec.options, Mapping):
        raise ValueError(f"params.yaml datasets.{name}: reader and root must be text and options a mapping "
                         f"(e.g. {{protocol: affectnet7}}), got reader {spec.reader!r}, root {spec.root!r}, "
                         f"options {spec.options!r}")
    if not isinstance(spec.detect, Mapping):
        raise ValueError(f"datasets.{name}.detect must be a mapping of detect values (e.g. {{backend: precropped}}), "
                         f"got {spec.detect!r}")
    if build:
        check_reader(spec, f"params.yaml datasets.{name}")
    return spec


def check_reader(spec: DatasetSpec, where: str) -> None:
    """The reader's name and option names, as the detect stage builds it (no file opened: a training
    machine need not hold the raw images); an error gets ``where`` as a note."""
    try:
        open_reader(spec.reader, spec.root, spec.options)
    except (ValueError, KeyError) as err:
        err.add_note(where)
        raise


def read_dataset(spec: DatasetSpec) -> Iterator[FaceRecord | Dropped]:
    return open_reader(spec.reader, spec.root, spec.options).read()


def warn_absolute_root(name: str, spec: DatasetSpec) -> None:
    """Each sample's provenance in the shards records its source path: under an absolute root a
    machine that mounts the data elsewhere writes other shards, and DVC sees another output."""
    if Path(spec.root).is_absolute():
        log.warning("dataset %s's root %s is absolute: the shards record each image's path, so a machine with the "
                    "images elsewhere writes different shards; give a path inside the repository (a symlink to "
                    "the images works, e.g. raw/%s -> %s; docs/sharing.md)", name, spec.root, name, spec.root)


def source(spec: DatasetSpec) -> dict[str, Any]:
    """What the records come from, for the shards to record (``_info.json`` ``source``): the reader
    and its options with their defaults filled in (protocol, label mode, exclusions, subsets), not
    the root, a path of this machine (an option naming a file by an absolute path, such as a subset
    list, is recorded as given: name such files relative to the root). JSON-safe (tuples as lists)."""
    reader = open_reader(spec.reader, spec.root, spec.options)
    return json.loads(json.dumps({"reader": spec.reader, "options": dict(sorted(reader.options.items()))},
                                 default=str))


def official_splits(spec: DatasetSpec) -> tuple[str, ...]:
    """The splits the dataset's publisher defines (:meth:`DatasetReader.official_splits`)."""
    return open_reader(spec.reader, spec.root, spec.options).official_splits()
