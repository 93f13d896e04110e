"""Face backends, registered by name; heavy model imports happen on first use."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ferdata.faces.base import BACKENDS, Face, FaceBackend, MissingModelError, select_face
from ferdata.faces import dataset, embedded, insightface_backend, fan, auto  # noqa: F401  (registers)

__all__ = ["BACKENDS", "Face", "FaceBackend", "MissingModelError", "create_backend", "select_face"]


def create_backend(name: str, options: Mapping[str, Any] | None = None,
                   model_dir: str | Path | None = None, allow_download: bool = False) -> FaceBackend:
    """Build a registered backend by name (unknown names list the known ones; options it does
    not read are refused)."""
    cls = BACKENDS.get(name)
    cls.check_options(options or {})
    return cls(options, model_dir, allow_download)
