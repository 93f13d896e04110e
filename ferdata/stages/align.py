"""Align stage: detect table -> aligned NxN faces + crop-frame landmarks, in tar chunks.

Each sample: ``jpg`` (aligned RGB face), ``lmk.npy`` (68x2 float32, crop pixels; absent
when the backend has no 68 points) and ``json`` (record provenance, backend, score,
box and the source->crop matrix). Train and test go through the same function.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferdata.geometry import align_face
from ferdata.io import BadImage, decode_rgb, encode_jpeg
from ferdata.parallel import parallel_map
from ferdata.progress import progress
from ferdata.records import Dropped, load_image_bytes, record_from_dict
from ferdata.report import StageReport
from ferdata.stages.detect import read_faces, write_drops
from ferdata.tario import TarShardWriter

log = logging.getLogger(__name__)
PREFIX = "aligned"


@dataclass(frozen=True)
class AlignParams:
    size: int
    padding: float
    jpeg_quality: int
    workers: int
    chunk_size: int


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class AlignWorker:
    """Picklable callable: one detect row -> (key, fields) or a Dropped."""

    def __init__(self, params: AlignParams) -> None:
        self.params = params

    def __call__(self, row: dict) -> tuple[str, dict[str, bytes]] | Dropped:
        rec = record_from_dict(row["record"])
        face = row["face"]
        try:
            image = decode_rgb(load_image_bytes(rec))
        except (OSError, BadImage) as e:
            return Dropped(rec.dataset, rec.key, getattr(e, "reason", "unreadable_file"), rec.path)
        lmk68 = np.asarray(face["lmk68"], np.float32) if face["lmk68"] is not None else None
        al = align_face(image, np.asarray(face["kps5"], np.float32), self.params.size, self.params.padding, lmk68)
        meta = {
            **{k: v for k, v in row["record"].items() if k not in ("pixels", "landmarks")},
            "backend": row["backend"], "score": face["score"], "box": face["box"],
            "num_faces": row["num_faces"], "matrix": np.asarray(al.matrix, np.float64).round(6).tolist(),
            "size": self.params.size, "sha256": row["sha256"],
        }
        fields = {"jpg": encode_jpeg(al.image, self.params.jpeg_quality),
                  "json": json.dumps(meta, sort_keys=True).encode()}
        if al.lmk68 is not None:
            fields["lmk.npy"] = npy_bytes(al.lmk68)
        return rec.key, fields


def run_align(detect_dir: str | Path, params: AlignParams, out_dir: str | Path) -> StageReport:
    out = Path(out_dir)
    report = StageReport("align")
    drops: list[Dropped] = []
    rows = read_faces(detect_dir)
    with TarShardWriter(out, PREFIX, params.chunk_size) as writer:
        for res in progress(parallel_map(AlignWorker(params), rows, params.workers), desc="align", unit="face"):
            if isinstance(res, Dropped):
                drops.append(res)
                continue
            writer.write(*res)
            report.kept += 1
    write_drops(out, report, drops)
    report.write(out / "report.json")
    log.info("align: kept %d, dropped %s", report.kept, dict(report.dropped))
    return report
