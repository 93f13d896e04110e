"""Backends that trust the dataset: its own annotations, or images that already are faces."""
from __future__ import annotations

import numpy as np

from ferdata.faces.base import BACKENDS, Face, FaceBackend
from ferdata.geometry import five_from_68, template
from ferdata.records import FaceRecord, scaled_points


@BACKENDS.register("annotations")
class AnnotationsBackend(FaceBackend):
    """The dataset's own box and 68 (or 5) landmarks, e.g. AffectNet's CSV or RAF-DB's manual points."""

    name = "annotations"
    cacheable = False
    needs_pixels = False
    finds_faces = False

    def detect(self, image: np.ndarray, record: FaceRecord) -> list[Face]:
        if not self.applies_to(record):                  # none, or not 68 / 5 points: no face (a counted drop)
            return []
        lmk = np.asarray(record.landmarks, np.float32)
        kps5 = five_from_68(lmk) if lmk.shape == (68, 2) else lmk
        box = record.box or (*lmk.min(0), *lmk.max(0))
        return [Face(tuple(float(v) for v in box), 1.0, kps5, lmk if lmk.shape == (68, 2) else None)]

    def refuses(self, record: FaceRecord) -> tuple[str, str] | None:
        if self.applies_to(record):
            return None
        return ("no_landmarks", "the annotations backend places a face by the dataset's 68 or 5 landmarks and this "
                "record has none; use a backend that finds faces (--backend auto or embedded)")

    @staticmethod
    def applies_to(record: FaceRecord) -> bool:
        return record.landmarks is not None and np.asarray(record.landmarks).shape in ((68, 2), (5, 2))


@BACKENDS.register("precropped")
class PrecroppedBackend(FaceBackend):
    """The whole image is an aligned face crop (CK+48, RAF-DB aligned, FER2013 48x48).

    The 5 keypoints are the 112 ArcFace template scaled to the image; align warps such a face
    as a resize of the whole image (each axis by its own factor) at any crop size, edges continued
    (``ferdata.crop.crop_face``, ``crop_border``); no 68 landmarks exist unless the
    dataset gives them.
    """

    name = "precropped"
    cacheable = False
    needs_pixels = False
    finds_faces = False

    def detect(self, image: np.ndarray, record: FaceRecord) -> list[Face]:
        h, w = image.shape[:2]
        # The 112 template in the image's pixels, pixel centres matched (as a resize maps them).
        kps5 = scaled_points(template(112), np.array([w / 112.0, h / 112.0]))
        lmk = record.landmarks
        lmk68 = np.asarray(lmk, np.float32) if lmk is not None and np.asarray(lmk).shape == (68, 2) else None
        return [Face((0.0, 0.0, float(w), float(h)), 1.0, kps5, lmk68)]
