"""``auto``: the dataset's own landmarks where a record has them, else the best model
backend whose weights are present here (insightface, then face_alignment), else the
offline embedded stack. Never downloads. Each face records the backend that made it,
and the detect table stores it per sample.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ferdata.faces.base import BACKENDS, Face, FaceBackend, MissingModelError
from ferdata.faces.dataset import AnnotationsBackend
from ferdata.records import FaceRecord

log = logging.getLogger(__name__)

PREFERENCE = ("insightface", "face_alignment", "embedded")


def first_ready(names: Sequence[str], options: Mapping[str, Any] | None, model_dir: str | Path | None,
                per_backend: Mapping[str, Mapping[str, Any]] | None = None,
                allow_download: bool = False) -> tuple[FaceBackend | None, list[str]]:
    """The first of the backends ``names`` whose models are here, built with ``per_backend[name]``
    updated by ``options`` (each keeps those it reads), and why each one before it could not run (its
    error in full: the first line names it).
    ``allow_download``: one that fetches its own weights (``downloads``: insightface, FAN) and
    whose package is installed counts as ready without them (it fetches them on first use); else
    nothing is ever downloaded."""
    reasons = []
    for name in names:
        try:                                # an option only this candidate refuses (insightface's det_size
            backend = BACKENDS.get(name)({**(per_backend or {}).get(name, {}), **(options or {})}, model_dir,
                                         allow_download)          # a multiple of 32): it cannot run, the next may
        except ValueError as e:
            log.warning("face backend %s refuses the options, so it is not used: %s", name, e)
            reasons.append(_why(name, e))
            continue
        try:
            backend.check_ready()
        except MissingModelError as e:
            if allow_download and backend.downloads:
                log.info("%s: model files missing here; fetched on first use (allow_download)", name)
                return backend, reasons
            reasons.append(_why(name, e))
            continue
        except ImportError as e:
            reasons.append(_why(name, e))
            continue
        return backend, reasons
    return None, reasons


def _why(name: str, err: Exception) -> str:
    """Why backend ``name`` cannot run: its error in full (the file, where it looked, the fix)."""
    text = str(err)
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


def choose_model_backend(options: Mapping[str, Any], model_dir: str | Path | None) -> FaceBackend:
    """The first backend in ``PREFERENCE`` whose weights are here: ``auto`` never downloads (with
    downloads allowed, the first preference would always be fetched, whatever is installed)."""
    backend, reasons = first_ready(PREFERENCE, options, model_dir)
    if backend is None:             # each backend's own error: its missing file, where it looked, the fix
        raise MissingModelError("auto", "any face model", list(PREFERENCE),
                                "make one backend's models available (or give options it takes):\n" + "\n".join(
                                    "    " + r.replace("\n", "\n    ") for r in reasons))
    if reasons:
        log.info("auto: using %s (%s)", backend.name, "; ".join(r.splitlines()[0] for r in reasons))
    return backend


@BACKENDS.register("auto")
class AutoBackend(FaceBackend):
    """Annotations when present, else the best locally available model backend."""

    name = "auto"
    cacheable = True

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """Every candidate's options: each delegate keeps those it reads."""
        return frozenset().union(*(BACKENDS.get(n).option_names() for n in PREFERENCE))

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None,
                 allow_download: bool = False) -> None:
        super().__init__(options, model_dir, allow_download)
        self.delegate = choose_model_backend(self.options, model_dir)
        self.annotations = AnnotationsBackend(self.options, model_dir)

    def signature(self) -> str:
        # The delegate's own signature: `auto` and the backend it picked share cache entries.
        return self.delegate.signature()

    def cacheable_for(self, record: FaceRecord | None) -> bool:
        return record is None or not AnnotationsBackend.applies_to(record)

    def _annotated(self, image: np.ndarray, record: FaceRecord) -> list[Face]:
        return [f if f.backend else dataclasses.replace(f, backend=self.annotations.name)
                for f in self.annotations.detect(image, record)]

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        if record is not None and AnnotationsBackend.applies_to(record):
            return self._annotated(image, record)
        return self.delegate.detect(image, record)

    def detect_batch(self, images: Sequence[np.ndarray],
                     records: Sequence[FaceRecord | None]) -> list[list[Face]]:
        out: list[list[Face]] = [[] for _ in images]
        rest = []
        for i, rec in enumerate(records):
            if rec is not None and AnnotationsBackend.applies_to(rec):
                out[i] = self._annotated(images[i], rec)
            else:
                rest.append(i)
        if rest:
            found = self.delegate.detect_batch([images[i] for i in rest], [records[i] for i in rest])
            for i, faces in zip(rest, found):
                out[i] = faces
        return out
