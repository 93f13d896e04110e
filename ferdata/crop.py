"""A detect row's face cropped as the align stage crops it (:func:`crop_face`), from the points
checked to be a face's (:func:`checked_points`); inference crops new pictures with the same code."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ferdata.geometry import (Aligned, align_face, crop_reduction, five_from_68, reduced_frame, spread,
                              template_misfit, transform_points, warp_face)
from ferdata.io import Decoded


class BadGeometry(ValueError):
    """Keypoints that cannot define an alignment; ``reason`` is the drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # rebuilt whole in the parent when a worker raises it (notes too)
        return (type(self), (self.reason, self.detail), self.__dict__)


WHOLE_IMAGE_BACKENDS = ("precropped",)      # the face is the whole image (ferdata.faces.dataset)


def crop_border(backend: str) -> str:
    """How a crop continues past its image's edge: a precropped image's own edge pixels (the
    image is the crop, its last pixel centres sit just inside the crop's edge), else black."""
    return "replicate" if backend in WHOLE_IMAGE_BACKENDS else "black"


# Keypoints no face has (ferdata.geometry.template_misfit): real detections stay under 0.43 (1,101
# faces of the benchmark photos); a 3-D face turned to full profile and pitched 30 degrees reaches
# 0.7-0.8 with detector noise; mirrored or shuffled order about 0.97.
MAX_MISFIT = 0.9
# The signed width of the eyes (first-listed to second) across the eyes-to-mouth line, in eye-to-mouth lengths, whatever
# the roll: 0.87 for the template, 0.43 or more on the sample's 480 annotated faces; negative for the subject's order
# (a mirror image, which no rotation makes): a turned face so listed fits the template under MAX_MISFIT (22 of the 480,
# misfit 0.86-0.90, handedness -0.43 or less) and was kept, warped upside down and shrunk. A face in full profile is
# about 0 either way (its eyes a pixel of detector noise apart): as a sine it was +-1, and 30% of them were dropped.
MIN_HANDEDNESS = -0.25
# The same for the mouth corners, which a 5-point file can list mirrored alone (eyes image-left first, the mouth
# the subject's): misfit 0.74-0.85, under MAX_MISFIT, a crop shrunk to 0.55-0.67, features 8-12 px of 112 off.
# Real faces: 0.23 or more (the sample's 480 annotated faces and 465 RetinaFace detections); mirrored about -0.7.
MOST_AT_ONE_SPOT = 3     # keypoints on one spot: most of the 5 missing (their misfit stays under MAX_MISFIT)
MIN_SPREAD_PX = 1.0      # RMS spread of the 5 keypoints in source pixels (the template's: 23 px at 112)
# The 68 landmarks' five points (eye centres, nose tip, mouth corners) away from the 5 keypoints, RMS, in
# keypoint spreads: the embedded backend's dlib fits reach 0.64 (median 0.16, the sample's 465 faces); a
# fit to another face or a misplaced box is several.
MAX_LANDMARK_GAP = 1.0
# Every one of the 68 landmarks within this many keypoint spreads of the keypoints' centre: the farthest (a
# jaw point) reaches 2.3 (median) to 2.9 (101 faces of the test photos and LFW); a typo'd point is far out.
MAX_LANDMARK_REACH = 8.0


def source_matrix(matrix: np.ndarray, scale: float) -> np.ndarray:
    """The source-image -> crop matrix, given the decoded-image (at ``scale``) -> crop one."""
    return np.asarray(matrix, np.float64) @ np.vstack([reduced_frame(scale), [0.0, 0.0, 1.0]])


def checked_points(face: dict, shape: tuple[int, ...], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """(kps5, lmk68) in the frame of the image decoded at ``scale`` as float32, or
    :class:`BadGeometry` when the box or points are non-finite, the points coincide or spread over
    less than :data:`MIN_SPREAD_PX` (a zoom of hundreds: a crop of one pixel), they fit no face
    (:data:`MAX_MISFIT`: listed in mirrored or shuffled order, or with most points missing), the 68
    landmarks are not the keypoints' face (:data:`MAX_LANDMARK_GAP`), or the centre lies off the image."""
    if not np.isfinite(np.asarray(face["box"], np.float64)).all():
        raise BadGeometry("bad_box", f"face box {face['box']} is not finite")
    kps = np.asarray(face["kps5"], np.float64)
    lmk = np.asarray(face["lmk68"], np.float64) if face.get("lmk68") is not None else None
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise BadGeometry("bad_landmarks", f"5 keypoints non-finite or shaped {kps.shape}")
    if lmk is not None and (lmk.shape != (68, 2) or not np.isfinite(lmk).all()):
        raise BadGeometry("bad_landmarks", f"68 landmarks non-finite or shaped {lmk.shape}")
    frame = reduced_frame(scale)
    kps = transform_points(kps, frame).astype(np.float64)
    lmk = None if lmk is None else transform_points(lmk, frame)
    if np.ptp(kps, axis=0).max() < 1e-3:
        raise BadGeometry("bad_landmarks", "degenerate: the 5 keypoints coincide")
    if (same := _most_at_one_spot(kps)) >= MOST_AT_ONE_SPOT:
        raise BadGeometry("bad_landmarks", f"{same} of the 5 keypoints lie on one spot: placeholders of missing "
                                           "points (no face has them there)")
    if (size := spread(kps) / scale) < MIN_SPREAD_PX:
        raise BadGeometry("bad_landmarks", f"the 5 keypoints spread over {size:.2g} px (RMS about their centre): "
                                           "no face that small can be aligned")
    if (misfit := template_misfit(kps)) > MAX_MISFIT:
        raise BadGeometry("implausible_landmarks", f"the 5 keypoints fit no face (misfit {misfit:.2f} > "
                                                   f"{MAX_MISFIT}: a face in full profile is under 0.8): listed in "
                                                   "mirrored or shuffled order, or with most points missing?")
    if (hand := _handedness(kps)) < MIN_HANDEDNESS:
        raise BadGeometry("implausible_landmarks", f"the 5 keypoints are a mirror image of a face's (handedness "
                                                   f"{hand:.2f}): listed in the subject's order? ArcFace order is the "
                                                   "image-left eye, the image-right eye, nose tip, image-left and "
                                                   "image-right mouth corners")
    if (hand := _handedness(kps, (3, 4))) < MIN_HANDEDNESS:
        raise BadGeometry("implausible_landmarks", f"the 5 keypoints' mouth corners are a mirror image of a face's "
                                                   f"(handedness {hand:.2f}), its eyes are not: the mouth listed in "
                                                   "the subject's order? ArcFace order is the image-left eye, the "
                                                   "image-right eye, nose tip, image-left and image-right mouth "
                                                   "corners")
    if lmk is not None:
        check_landmarks(lmk.astype(np.float64), kps)
    cx, cy = kps.mean(0)
    if not (0 <= cx < shape[1] and 0 <= cy < shape[0]):
        raise BadGeometry("face_outside_image", f"keypoint centre ({cx / scale:.0f}, {cy / scale:.0f}) outside "
                                                f"{round(shape[1] / scale)}x{round(shape[0] / scale)}")   # the file's
    return kps.astype(np.float32), lmk


def _handedness(kps: np.ndarray, pair: tuple[int, int] = (0, 1)) -> float:
    """The eye line's (first-listed eye to second; ``pair`` (3, 4): the mouth corners') width across the line from
    the eyes' midpoint to the mouth corners' (y down), in lengths of the latter: about 0.9 (mouth 0.7) for a frontal
    face in ArcFace order, as much below 0 for its mirror-order listing, near 0 for a face in profile (whose points'
    order noise decides)."""
    eye = kps[pair[1]] - kps[pair[0]]
    down = (kps[3] + kps[4]) / 2 - (kps[0] + kps[1]) / 2
    norm = float(down @ down)
    return float(eye[0] * down[1] - eye[1] * down[0]) / norm if norm > 0 else 1.0


def _most_at_one_spot(kps: np.ndarray) -> int:
    """The largest number of the keypoints within 1e-3 px of one of them (a dataset's placeholder for
    a missing point, e.g. (0, 0) or (-1, -1), repeated): the template misfit of a face with 3 or 4
    of its points at one spot is 0.66-0.9, under MAX_MISFIT."""
    near = np.abs(kps[:, None, :] - kps[None, :, :]).max(-1) < 1e-3
    return int(near.sum(1).max())


def check_landmarks(lmk: np.ndarray, kps: np.ndarray) -> None:
    """The 68 landmarks must be a face's, the face of the 5 keypoints (models of their own give the
    two: RetinaFace and dlib, SCRFD and 1k3d68): regions and heatmaps are drawn from them."""
    if np.ptp(lmk, axis=0).max() < 1e-3:
        raise BadGeometry("bad_landmarks", "degenerate: the 68 landmarks coincide")
    five = five_from_68(lmk).astype(np.float64)
    if (misfit := template_misfit(five)) > MAX_MISFIT:
        raise BadGeometry("implausible_landmarks", f"the 68 landmarks fit no face (misfit {misfit:.2f} > "
                                                   f"{MAX_MISFIT}): listed in mirrored or shuffled order?")
    if (gap := float(np.sqrt(((five - kps) ** 2).sum(1).mean())) / spread(kps)) > MAX_LANDMARK_GAP:
        raise BadGeometry("implausible_landmarks", f"the 68 landmarks lie {gap:.2f} keypoint spreads from the 5 "
                                                   f"keypoints (> {MAX_LANDMARK_GAP}): they are another face's, or the "
                                                   "landmark model lost this one (dlib's points often miss a face "
                                                   "rolled 60 degrees or more)")
    reach = np.sqrt(((lmk - kps.mean(0)) ** 2).sum(1)) / spread(kps)
    if reach.max() > MAX_LANDMARK_REACH:
        far = int(reach.argmax())
        raise BadGeometry("implausible_landmarks", f"landmark {far} lies {reach[far]:.3g} keypoint spreads from "
                                                   f"the keypoints' centre (> {MAX_LANDMARK_REACH}; a face's reach "
                                                   "about 3): a misplaced point")


def whole_image_matrix(width: float, height: float, size: int, padding: float = 0.0) -> np.ndarray:
    """The 2x3 matrix that resizes a ``width`` x ``height`` picture to the ``size`` crop (pixel centres
    matched, each axis by its own factor: a similarity fitted to a template scaled to a non-square
    picture cut rows off and smeared its edge columns over 13% of the crop), then shrinks it about the
    crop's centre as ``padding`` shrinks the template (:func:`ferdata.geometry.template`)."""
    resize = np.vstack([reduced_frame(size / width, size / height), [0.0, 0.0, 1.0]])
    k, c = 1.0 / (1.0 + padding), size / 2.0
    pad = np.array([[k, 0.0, c * (1 - k)], [0.0, k, c * (1 - k)], [0.0, 0.0, 1.0]])
    return (pad @ resize)[:2]


def whole_image_reduction(width: float, height: float, size: int, padding: float = 0.0, limit: int = 8) -> int:
    """The largest power of two r <= ``limit`` at which a whole-image face decoded at 1/r keeps at least
    the crop's resolution along both axes."""
    zoom = size / (1.0 + padding) / min(width, height)
    r = 1
    while r * 2 <= limit and zoom * r * 2 <= 1.0:
        r *= 2
    return r


def _picture_size(face: dict) -> tuple[float, float] | None:
    """(width, height) of a whole-image face's source picture (its box is the picture), or None."""
    box = np.asarray(face["box"], np.float64).ravel()
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        return None                                             # checked_points says why
    return float(box[2] - box[0]), float(box[3] - box[1])


def crop_face(face: dict, backend: str, size: int, padding: float,
              decoded_at: Callable[[int], Decoded]) -> tuple[Aligned, Decoded]:
    """A detect row's face cropped as the align stage crops it, and the picture it was warped
    from. A face much larger than the crop is warped from the picture at 1/2..1/8
    (``decoded_at(reduce)``: faster, and no aliasing); detections are in source pixels, mapped
    into that frame; the border follows the backend (:func:`crop_border`). Raises
    :class:`BadGeometry` (and ``decoded_at``'s :class:`BadImage`) for a face the stage drops."""
    if backend not in WHOLE_IMAGE_BACKENDS:
        decoded = decoded_at(crop_reduction(np.asarray(face["kps5"], np.float64), size, padding))
        kps5, lmk68 = checked_points(face, decoded.rgb.shape, decoded.scale)
        return align_face(decoded.rgb, kps5, size, padding, lmk68, crop_border(backend)), decoded
    # the picture is the face: resized, by its size in source pixels (a reduced decode's shape is rounded up)
    picture = _picture_size(face)
    decoded = decoded_at(whole_image_reduction(*picture, size, padding) if picture else 1)
    _, lmk68 = checked_points(face, decoded.rgb.shape, decoded.scale)
    width, height = picture or decoded.rgb.shape[1::-1]
    m = whole_image_matrix(width * decoded.scale, height * decoded.scale, size, padding)
    return warp_face(decoded.rgb, m, size, lmk68, crop_border(backend)), decoded
