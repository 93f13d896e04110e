"""Near copies of held-out faces among the aligned training faces: a picture's copy re-encoded, resized,
mirrored or cropped a little otherwise, its face found and aligned again (:func:`face_vector`,
:class:`NearCopies`), which the shard stage looks for once the splits are known (exact copies, the same
file, are :mod:`ferdata.dedup`'s). A copy the face detector found again is aligned 2-4 px (of 112)
otherwise: most are found, not all (measured: 294 of 405; half or double size and mirrored copies: 33 of 109)."""
from __future__ import annotations

import math

import cv2
import numpy as np


NEAR_SIMILARITY = 0.98  # correlation of two faces' blurred 16x16 grey images at or above which they are near copies
NEAR_DETRENDED = 0.95   # ... if also this close with each image's lighting ramp taken out (a side light is shared)
_GRID = 16              # the faces compared at 16x16: a copy re-aligned 2-4 px (of 112) otherwise moves under a cell
_BLUR = 2.0 / 112       # Gaussian sigma, of the crop's side, before the 16x16 area resize
_SLACK = 1e-3           # the float32 search takes candidates this far below NEAR_SIMILARITY; each is checked exactly
_LOW = 64               # DCT coefficients (the lowest frequencies) the first pass compares; the rest's length bounds it
_CELLS = 1 << 22        # (probe, held face) bounds computed at once: ~16 MB
_SLICE = 256            # a probe's candidates compared whole at once, up to the first near one


def face_vector(jpg: bytes) -> np.ndarray | None:
    """An aligned face as its grey image blurred and area-resized to 16x16 (uint8, 256 values), with
    its mirror image's: (2, 256); None for bytes that do not decode. Compared by correlation
    (:func:`similarity`): brightness, contrast, colour and re-encoding leave it near 1, and a copy the
    detector found again (the picture resized, mirrored or cropped otherwise: aligned 2-4 px of 112
    and 1-2 degrees otherwise, median) mostly stays above :data:`NEAR_SIMILARITY`, where the sign
    bits of a difference hash at this size changed in 26-44 of 256. Measured (an audit,
    embedded backend, 37 real faces, each copied 11 ways into train): 294 of 405 copies found (the
    difference hash found 193; re-encoded, grey, brighter: 106 of 111; cropped 2-5%: 81 of 111;
    half or double size, mirrored: 33 of 109), different people's faces at most 0.92 (30,885 pairs)."""
    grey = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return None
    blurred = cv2.GaussianBlur(grey, (0, 0), _BLUR * grey.shape[1])
    small = cv2.resize(blurred, (_GRID, _GRID), interpolation=cv2.INTER_AREA)
    return np.stack([small, small[:, ::-1]]).reshape(2, _GRID * _GRID)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The correlation of two of :func:`face_vector`'s uint8 images, from exact integer sums (the same on
    every machine, so a pair at the threshold is found everywhere or nowhere); 0 where one is flat."""
    x, y = a.astype(np.int64), b.astype(np.int64)
    n, sx, sy = x.size, int(x.sum()), int(y.sum())
    qx, qy = n * int(x @ x) - sx * sx, n * int(y @ y) - sy * sy
    return (n * int(x @ y) - sx * sy) / math.sqrt(qx * qy) if qx and qy else 0.0


_RAMP = np.arange(_GRID, dtype=np.int64) * 2 - (_GRID - 1)      # -15, -13 .. 15: sums to 0
_X, _Y = np.tile(_RAMP, _GRID), np.repeat(_RAMP, _GRID)          # left to right, top to bottom; orthogonal
_K = int(_X @ _X)                                                # their squared length: 85 x the 256 cells


def detrended_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`similarity` of two of :func:`face_vector`'s images less each one's best-fitting plane (its mean and
    a left-right and top-down lighting ramp), from exact integer sums; 0 where one is a plane. Low-contrast faces
    lit strongly from one side correlate at 0.98 by the light alone (different people, FER2013-like crops)."""
    x, y = a.astype(np.int64), b.astype(np.int64)

    def inner(u: np.ndarray, v: np.ndarray) -> int:     # _K x the product of u and v, their planes taken out
        return (_K * int(u @ v) - _K // u.size * int(u.sum()) * int(v.sum())
                - int(u @ _X) * int(v @ _X) - int(u @ _Y) * int(v @ _Y))
    qx, qy = inner(x, x), inner(y, y)
    return inner(x, y) / math.sqrt(qx * qy) if qx > 0 and qy > 0 else 0.0


def is_near(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two of :func:`face_vector`'s images are near copies: :func:`similarity` at least
    :data:`NEAR_SIMILARITY`, and :func:`detrended_similarity` at least :data:`NEAR_DETRENDED` (copies lose
    little by it: 1 of 2,229 pairs in an audit; different people lit alike fall to 0.94 at most)."""
    return similarity(a, b) >= NEAR_SIMILARITY and detrended_similarity(a, b) >= NEAR_DETRENDED


def _unit(vectors: np.ndarray) -> np.ndarray:
    """(N, 256) float32 each vector less its mean, of length 1 (flat: 0, which no face reaches)."""
    centred = vectors.astype(np.float32) - vectors.mean(1, dtype=np.float32, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


_PLANE = (np.stack([_X, _Y]) / math.sqrt(_K)).astype(np.float32)  # the two lighting ramps, of length 1


def _flat(vectors: np.ndarray) -> np.ndarray:
    """(N, 256) float32 each vector less its best-fitting plane (:func:`detrended_similarity`), of length 1 (a plane:
    0): their products are the faces' detrended similarities, to float32's precision."""
    centred = vectors.astype(np.float32) - vectors.mean(1, dtype=np.float32, keepdims=True)
    centred -= (centred @ _PLANE.T) @ _PLANE
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-3)


def _frequencies() -> np.ndarray:
    """(256, 256) the orthonormal 2D DCT of a 16x16 image as a matrix, its rows lowest frequencies first."""
    rows = np.stack([cv2.dct(e.reshape(_GRID, _GRID)).ravel() for e in np.eye(_GRID * _GRID)]).T
    order = np.argsort([i // _GRID + i % _GRID for i in range(_GRID * _GRID)], kind="stable")
    return rows[order]


_DCT = _frequencies()


def _bounds(unit: np.ndarray) -> np.ndarray:
    """(N, _LOW + 1) float32: each unit vector's lowest-frequency DCT coefficients and the length of the rest.
    The DCT is orthonormal, so the product of two rows is at least the two faces' correlation (the rest's
    product at most the product of its lengths): a pair whose bound is below NEAR_SIMILARITY is no near copy."""
    out = np.empty((len(unit), _LOW + 1), np.float32)
    for at in range(0, len(unit), 4096):        # float64 a few thousand faces at a time (whole: ~9 kB a face at once)
        coef = unit[at:at + 4096].astype(np.float64) @ _DCT.T
        out[at:at + len(coef), :_LOW] = coef[:, :_LOW]
        out[at:at + len(coef), _LOW] = np.sqrt((coef[:, _LOW:] ** 2).sum(1))
    return out


class NearCopies:
    """Held-out faces by :func:`face_vector`; :meth:`find_many` names, for each face, the first added that
    :func:`is_near` the face (else its mirror image). Every pair
    is compared: a float32 product of 65 numbers a face (:func:`_bounds`; BLAS, a batch of faces against every
    held face at once) leaves out the pairs that cannot be near, and the rest are compared whole, then exactly
    (80k training faces against 24k held out: 15 s on 2 busy cores, where most faces had near copies)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.mirrors: list[np.ndarray] = []
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, name: str, vectors: np.ndarray) -> None:
        self.names.append(name)
        self.vectors.append(vectors[0])
        self.mirrors.append(vectors[1])
        self._index = None

    def _built(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._index is None:
            held = np.stack(self.vectors)
            unit = _unit(held)
            self._index = held, unit, _bounds(unit).T
        return self._index

    def earlier(self, groups: list[object] | None = None) -> list[int]:
        """For each face added, the first face added before it that :func:`is_near` it (else its mirror image), or
        -1: near copies within one set of faces (a test split that holds one face twice scores it twice).
        ``groups``: one per face added (None: in no group); faces of one group are not paired (one person's shots
        in a lab dataset), left out with the bounds: a face whose earlier near faces are all of its own group costs
        no more than one that has none (they were compared one by one in Python with every earlier face)."""
        if not self.vectors:
            return []
        held, _, bounds = self._built()
        found = np.full(len(held), -1, np.int64)
        rows = max(1, _CELLS // len(held))
        codes = {}                                                  # a group's number; a face in none: its own
        group = np.array([-1 - i if g is None else codes.setdefault(g, len(codes))
                          for i, g in enumerate(groups or [None] * len(held))], np.int64)
        for probes in (held, np.stack(self.mirrors)):
            todo = np.flatnonzero(found < 0)
            unit = _unit(probes[todo])
            bound = _bounds(unit)
            for at in range(0, len(todo), rows):
                maybe = bound[at:at + rows] @ bounds >= NEAR_SIMILARITY - _SLACK
                maybe &= np.arange(len(held)) < todo[at:at + rows, None]         # faces added before it only
                maybe &= group != group[todo[at:at + rows], None]                  # of another group only
                for r in np.flatnonzero(maybe.any(1)):
                    found[todo[at + r]] = self._first_of(probes[todo[at + r]], unit[at + r], np.flatnonzero(maybe[r]))
        return found.tolist()

    def find(self, vectors: np.ndarray) -> str | None:
        return self.find_many([vectors])[0]

    def find_many(self, faces: list[np.ndarray], batch: int = 1024) -> list[str | None]:
        found: list[str | None] = [None] * len(faces)
        if not self.vectors or not faces:
            return found
        self._built()
        for start in range(0, len(faces), batch):
            part = np.stack(faces[start:start + batch])                 # (B, 2, 256)
            best = self._first(part[:, 0])
            if (left := np.flatnonzero(best < 0)).size:             # no match: the mirror image's
                best[left] = self._first(part[left, 1])
            for i in np.flatnonzero(best >= 0):
                found[start + i] = self.names[best[i]]
        return found

    def _first(self, probes: np.ndarray) -> np.ndarray:
        """For each face, the first held face :func:`is_near` it, or -1."""
        held, units, bounds = self._index
        best = np.full(len(probes), -1, np.int64)
        unit = _unit(probes)
        bound = _bounds(unit)
        rows = max(1, _CELLS // len(held))
        for at in range(0, len(probes), rows):
            maybe = bound[at:at + rows] @ bounds >= NEAR_SIMILARITY - _SLACK
            for i in np.flatnonzero(maybe.any(1)):
                best[at + i] = self._first_of(probes[at + i], unit[at + i], np.flatnonzero(maybe[i]))
        return best

    def _first_of(self, probe: np.ndarray, unit: np.ndarray, candidates: np.ndarray) -> int:
        """The first of ``candidates`` (held faces, in order) :func:`is_near` ``probe``, or -1:
        compared a slice at a time, up to the first near one (a still video's thousands of alike held faces are
        each a candidate: comparing them all took a probe milliseconds, the search hours), in float32 first, both
        correlations, and then exactly."""
        held, units, _ = self._index
        for at in range(0, len(candidates), _SLICE):
            near = candidates[at:at + _SLICE]
            near = near[units[near] @ unit >= NEAR_SIMILARITY - _SLACK]
            if near.size:       # faces alike by a light from one side only: passed over here, not one by one below
                near = near[_flat(held[near]) @ _flat(probe[None])[0] >= NEAR_DETRENDED - _SLACK]
            if (j := next((j for j in near if is_near(probe, held[j])), -1)) >= 0:
                return j
        return -1
