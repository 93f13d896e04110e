"""Detection cache keyed by image content hash + backend signature (SQLite, main process only).

A repeated run with unchanged inputs performs zero detections; new images are the
only ones detected. The cache lives outside DVC outputs (DVC deletes outputs
before re-running a stage), under ``detect.cache_dir``.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferdata.faces.base import Face


@dataclass(frozen=True)
class Detection:
    """All faces found in one image, and the image's (h, w)."""

    shape: tuple[int, int]
    faces: tuple[Face, ...]

    def to_json(self) -> str:
        return json.dumps({"shape": list(self.shape), "faces": [face_to_dict(f) for f in self.faces]},
                          separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> "Detection":
        d = json.loads(text)
        return Detection(tuple(d["shape"]), tuple(face_from_dict(f) for f in d["faces"]))


def face_to_dict(f: Face) -> dict:
    return {"box": [round(float(v), 3) for v in f.box], "score": round(float(f.score), 5),
            "kps5": np.asarray(f.kps5, np.float64).round(3).tolist(),
            "lmk68": np.asarray(f.lmk68, np.float64).round(3).tolist() if f.lmk68 is not None else None}


def face_from_dict(d: dict) -> Face:
    return Face(tuple(d["box"]), d["score"], np.asarray(d["kps5"], np.float32),
                np.asarray(d["lmk68"], np.float32) if d.get("lmk68") is not None else None)


class DetectionCache:
    """``get``/``put`` detections by (sha256, backend signature)."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path / "detections.sqlite")
        self.db.execute("CREATE TABLE IF NOT EXISTS det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")

    def get(self, sha: str, sig: str) -> Detection | None:
        row = self.db.execute("SELECT value FROM det WHERE sha=? AND sig=?", (sha, sig)).fetchone()
        return Detection.from_json(row[0]) if row else None

    def put(self, sha: str, sig: str, det: Detection) -> None:
        self.db.execute("INSERT OR REPLACE INTO det VALUES (?, ?, ?)", (sha, sig, det.to_json()))

    def close(self) -> None:
        self.db.commit()
        self.db.close()
