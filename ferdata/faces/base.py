"""The face-backend interface: one image (+ its record) in, faces with iBUG-68 out.

Every backend ends in the same representation: a box, 5 ArcFace-order keypoints and
(where it has them) 68 iBUG landmarks, so one alignment and one heatmap renderer
serve all backends. Heavy imports happen inside each backend, on first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ferdata.records import FaceRecord
from ferdata.registry import Registry

BACKENDS: Registry[type["FaceBackend"]] = Registry("face backend")


class MissingModelError(FileNotFoundError):
    """A backend's model file is absent: says which file, where we looked, and the fix."""

    def __init__(self, backend: str, missing: str, looked_in: list[str], fix: str) -> None:
        super().__init__(
            f"{backend}: model file {missing!r} not found.\n"
            f"  looked in: {', '.join(looked_in)}\n"
            f"  fix: {fix}"
        )


@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixels."""

    box: tuple[float, float, float, float]   # x0, y0, x1, y1
    score: float
    kps5: np.ndarray                          # (5, 2) ArcFace order
    lmk68: np.ndarray | None = None           # (68, 2) iBUG order

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class FaceBackend:
    """Base class. ``signature()`` identifies results for the detection cache."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    cacheable: ClassVar[bool] = True   # results depend on pixels only (not on the record)

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None) -> None:
        self.options = dict(options or {})
        self.model_dir = Path(model_dir).expanduser() if model_dir else None

    def signature(self) -> str:
        opts = ",".join(f"{k}={self.options[k]}" for k in sorted(self.options))
        return f"{self.name}:v{self.version}:{opts}"

    def detect(self, image: np.ndarray, record: FaceRecord) -> list[Face]:
        """All faces in ``image`` (RGB uint8); an empty list means none was found."""
        raise NotImplementedError

    @classmethod
    def is_available(cls, model_dir: str | Path | None = None) -> bool:
        """True when the package imports and its weights are present (no download)."""
        return True


def select_face(faces: list[Face], image_shape: tuple[int, ...], rule: str) -> Face:
    """Keep one face: the ``largest`` box or the most ``central`` one."""
    if rule == "largest":
        return max(faces, key=lambda f: f.area)
    if rule == "central":
        cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
        return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)
    raise ValueError(f"face selection must be 'largest' or 'central', got {rule!r}")


def create_backend(name: str, options: Mapping[str, Any] | None = None,
                   model_dir: str | Path | None = None) -> FaceBackend:
    import ferdata.faces  # noqa: F401  (registers all backends)

    return BACKENDS.get(name)(options, model_dir)
