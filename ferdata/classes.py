"""Canonical expression classes and every dataset's native order, in one table.

The canonical order is AffectNet's. Every reader maps its native ids (or names)
through this module; ids are never inferred from folder sort order.
"""
from __future__ import annotations

import json
import shlex
import unicodedata
from typing import Mapping

CLASSES: tuple[str, ...] = (
    "Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
)
NEUTRAL = 0
CONTEMPT = 7

# index = native id, value = canonical id (see docs/reference/datasets_and_pipeline.md §1.11)
NATIVE_TO_CANONICAL: Mapping[str, tuple[int, ...]] = {
    "affectnet": (0, 1, 2, 3, 4, 5, 6, 7),          # 8 None, 9 Uncertain, 10 No-Face are dropped
    "fer2013": (6, 5, 4, 1, 2, 3, 0),               # 0 Angry .. 6 Neutral (also ExpW)
    "expw": (6, 5, 4, 1, 2, 3, 0),
    "ferplus": (0, 1, 3, 2, 6, 5, 4, 7),            # vote columns neutral..contempt
    "rafdb": (3, 4, 5, 1, 2, 6, 0),                 # after subtracting 1 from the 1-based label
    "ckplus": (0, 6, 7, 5, 4, 1, 2, 3),             # 0 neutral, 1 anger, 2 contempt, ...
}


def stored_class_id(text: bytes) -> int | None:
    """A shard sample's ``cls`` member as a canonical class id, or None when it is none ("x", "9")."""
    value = text.strip()
    return int(value) if value.isdigit() and value.isascii() and int(value) < len(CLASSES) else None


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the first ``num_classes`` canonical classes (7 drops Contempt)."""
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    return CLASSES[:num_classes]


def to_canonical(dataset: str, native: int) -> int:
    """Map a native integer label of ``dataset`` to the canonical id.

    Raises ``ValueError`` for ids outside the dataset's table, so a reader can
    record the row as dropped with that reason.
    """
    table = NATIVE_TO_CANONICAL[dataset]
    if not 0 <= native < len(table):
        raise ValueError(f"{dataset} label {native} outside 0..{len(table) - 1}")
    return table[native]


# ---- class names (folder names, JAFFE codes, SFEW folders) -------------------------------

class UnknownClassError(ValueError):
    """Class names that map to no canonical class; the message lists them and the fix."""

    def __init__(self, where: str, unknown: list[str]) -> None:
        self.unknown = sorted(unknown)
        option = f"mapping={{{json.dumps(self.unknown[0], ensure_ascii=False)}: <class>}}"
        super().__init__(
            f"{where}: unknown class name(s) {self.unknown}; known names: {sorted(SYNONYMS)}.\n"
            f"  fix: add an explicit mapping, options: {{mapping: {{{self.unknown[0]!r}: <one of "
            f"{', '.join(CLASSES)}>}}}} (a value of null excludes that class and counts its images as dropped); "
            f"on the command line: --option {shlex.quote(option)}"
        )


# lower-cased name -> canonical id. 'calm' (RAVDESS) is deliberately absent: it is not neutral
# in the datasets that use it, so it must be mapped explicitly.
SYNONYMS: Mapping[str, int] = {
    "neutral": 0, "neutrality": 0,
    "happy": 1, "happiness": 1, "joy": 1,
    "sad": 2, "sadness": 2,
    "surprise": 3, "surprised": 3,
    "fear": 4, "afraid": 4, "fearful": 4,
    "disgust": 5, "disgusted": 5,
    "anger": 6, "angry": 6,
    "contempt": 7,
}

# JAFFE expression codes (first two letters of the second file-name field).
JAFFE_CODES: Mapping[str, int] = {"NE": 0, "HA": 1, "SA": 2, "SU": 3, "FE": 4, "DI": 5, "AN": 6}


def canonical_id(name: str) -> int:
    """Canonical id of a class name: a canonical name or a synonym, case-insensitive.

    Integers and numeric strings are rejected on purpose: folder ids like ``3`` mean
    different classes in different datasets, so they need an explicit mapping.
    """
    cid = SYNONYMS.get(name.strip().lower())
    if cid is None:
        raise UnknownClassError("class name", [name])
    return cid


def _folded(name: str) -> str:
    """``name`` as mapping keys and folder names are compared: composed (NFC: a Mac's copy or zip names
    ``Ü`` decomposed, ``U`` + a combining mark, where an editor or shell types it composed), trimmed, lower-case."""
    return unicodedata.normalize("NFC", name).strip().lower()


def resolve_names(
    names: list[str], mapping: Mapping[str, str | None] | None = None, *, where: str = "folders"
) -> dict[str, int | None]:
    """Map every name in ``names`` to a canonical id, explicit ``mapping`` first.

    ``mapping`` is {name: canonical name or synonym, or None to exclude}; its keys
    match case-insensitively. Names neither in ``mapping`` nor known synonyms raise
    :class:`UnknownClassError` listing all of them at once (never silently dropped).
    Mapping keys that match no name also raise, since they are most likely typos.
    """
    mapping = mapping or {}
    pairs: list = []
    if isinstance(mapping, Mapping):        # folders named 1..7 (Kaggle's RAF-DB): YAML reads {1: Surprise} as numbers
        pairs = [(str(k) if isinstance(k, int) and not isinstance(k, bool) else k, v) for k, v in mapping.items()]
    if not isinstance(mapping, Mapping) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                   for k, v in pairs):
        raise ValueError(f"{where}: options.mapping must map folder names to classes (or to null, leaving the folder "
                         f"out), e.g. {{calm: Neutral, unsure: null}}; got {mapping!r}")
    explicit: dict[str, str | None] = {}
    given: dict[str, object] = {}
    for k, v in pairs:            # the keys as given: 1 and "1", Calm and calm name one folder
        low = _folded(k)
        if low in explicit and explicit[low] != v:
            raise ValueError(f"{where}: options.mapping names folder {low!r} twice ({given[low]!r}: "
                             f"{explicit[low]!r} and {k!r}: {v!r}); keep one")
        explicit[low], given[low] = v, k
    lowered = {_folded(n) for n in names}
    stray = sorted(k for k in explicit if k not in lowered)
    if stray:
        raise ValueError(f"{where}: mapping names {stray} match no class folder; present: {sorted(names)}")
    out: dict[str, int | None] = {}
    unknown: list[str] = []
    for name in names:
        low = _folded(name)
        if low in explicit:
            target = explicit[low]
            out[name] = None if target is None or str(target).strip() == "" else _explicit(target, where)
        elif low in SYNONYMS:
            out[name] = SYNONYMS[low]
        else:
            unknown.append(name)
    if unknown:
        raise UnknownClassError(where, unknown)
    return out


def _explicit(target: str, where: str) -> int:
    cid = SYNONYMS.get(str(target).strip().lower())
    if cid is None:
        raise ValueError(f"{where}: mapping target {target!r} is not a class; use one of {list(CLASSES)}")
    return cid
