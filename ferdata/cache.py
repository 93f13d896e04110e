"""Detection cache keyed by image content hash + backend signature (SQLite, main process only).

A repeated run with unchanged inputs performs zero detections; new images are the
only ones detected. The cache lives outside DVC outputs (DVC deletes outputs before
re-running a stage), under ``detect.cache_dir``. Writes are committed every
``COMMIT_EVERY`` puts, so a killed run keeps (and a re-run skips) most finished work.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ferdata.faces.base import Face

COMMIT_EVERY = 256


@dataclass(frozen=True)
class Detection:
    """All faces found in one image, and the image's (h, w)."""

    shape: tuple[int, int]
    faces: tuple[Face, ...]

    @cached_property
    def json(self) -> str:
        """The cached form (computed once; travels with the object between processes)."""
        return json.dumps({"shape": list(self.shape), "faces": [face_to_dict(f) for f in self.faces]},
                          separators=(",", ":"))

    def to_json(self) -> str:
        return self.json

    @staticmethod
    def from_json(text: str) -> "Detection":
        d = json.loads(text)
        return Detection(tuple(d["shape"]), tuple(face_from_dict(f) for f in d["faces"]))

    def canonical(self) -> "Detection":
        """The detection as the cache stores it (coordinates rounded to 1/1000 px, scores to
        1e-5), so a fresh result and its cached copy select and serialise identically.
        Equal to ``from_json(to_json())``, without the JSON round trip."""
        return Detection(tuple(int(v) for v in self.shape), tuple(_rounded(f) for f in self.faces))


def _round_points(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(np.asarray(a, np.float64).round(3), np.float32)


def _rounded(f: Face) -> Face:
    return dataclasses.replace(f, box=tuple(round(float(v), 3) for v in f.box), score=round(float(f.score), 5),
                               kps5=_round_points(f.kps5), lmk68=_round_points(f.lmk68))


def face_to_dict(f: Face) -> dict[str, Any]:
    """JSON-safe dict of a face (coordinates rounded to 1/1000 px)."""
    return {"box": [round(float(v), 3) for v in f.box], "score": round(float(f.score), 5),
            "kps5": np.asarray(f.kps5, np.float64).round(3).tolist(),
            "lmk68": np.asarray(f.lmk68, np.float64).round(3).tolist() if f.lmk68 is not None else None,
            "backend": f.backend}


def face_from_dict(d: dict[str, Any]) -> Face:
    return Face(tuple(d["box"]), d["score"], np.asarray(d["kps5"], np.float32),
                np.asarray(d["lmk68"], np.float32) if d.get("lmk68") is not None else None,
                d.get("backend", ""))


class DetectionCache:
    """``get``/``put`` detections by (sha256 of the encoded image, backend signature)."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "detections.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")
        self._pending = 0

    def get(self, sha: str, sig: str) -> Detection | None:
        """The cached detection, or ``None`` on a miss (a miss is not an error)."""
        row = self.db.execute("SELECT value FROM det WHERE sha=? AND sig=?", (sha, sig)).fetchone()
        return Detection.from_json(row[0]) if row else None

    def put(self, sha: str, sig: str, det: Detection) -> None:
        self.db.execute("INSERT OR REPLACE INTO det VALUES (?, ?, ?)", (sha, sig, det.to_json()))
        self._pending += 1
        if self._pending >= COMMIT_EVERY:
            self.db.commit()
            self._pending = 0

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM det").fetchone()[0]

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def __enter__(self) -> "DetectionCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
