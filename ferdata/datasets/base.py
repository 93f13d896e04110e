"""The dataset-reader interface and its registry.

A reader turns a dataset root in its publisher's on-disk format into a stream of
``FaceRecord`` (kept) and ``Dropped`` (counted by reason) items. Readers never
decode pixels except where the labels live in the pixels' container (FER2013 CSV).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from ferdata.records import Dropped, FaceRecord
from ferdata.registry import Registry

READERS: Registry[type["DatasetReader"]] = Registry("dataset reader")


class DatasetLayoutError(FileNotFoundError):
    """The root does not look like the dataset: names what was expected and what was found."""

    def __init__(self, reader: str, root: Path, expected: list[str]) -> None:
        root = Path(root)
        found = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
        where = f"{root} (exists)" if root.is_dir() else f"{root} (does not exist)"
        super().__init__(
            f"{reader}: {where} does not look like this dataset.\n"
            f"  expected: {', '.join(expected)}\n"
            f"  found:    {', '.join(found) or '(nothing)'}\n"
            f"  fix: point --root (or params.yaml datasets.<name>.root) at the dataset's top folder"
        )


class DatasetReader:
    """Base class: subclasses set ``name``/``expects`` and implement ``read``.

    ``options`` are the reader's own settings from params.yaml
    (``datasets.<name>.options``); unknown option names raise ``ValueError``.
    """

    name: ClassVar[str] = ""
    expects: ClassVar[str] = ""          # one line: what must be on disk, shown by `ferdata datasets`
    option_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, root: str | Path, **options: Any) -> None:
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.option_defaults)}"
            )
        self.root = Path(root)
        self.options = {**self.option_defaults, **options}

    def read(self) -> Iterator[FaceRecord | Dropped]:
        raise NotImplementedError


def open_reader(name: str, root: str | Path, options: Mapping[str, Any] | None = None) -> DatasetReader:
    """Instantiate the reader registered as ``name``."""
    return READERS.get(name)(root, **dict(options or {}))
