"""Derive stage: aligned faces -> landmark heatmap, left + mirrored right halves, region boxes.

Writes only the derived fields (``heatmap.png``, ``left.jpg``, ``right.jpg``,
``regions.json``) in the aligned chunks' key order; the shard stage joins them. A face
without 68 landmarks (a ``precropped`` dataset) gets no heatmap: a model that reads
heatmaps then stops with the missing field named, instead of training on blank maps.
All geometry comes from the aligned crop and its landmarks (nothing re-estimated).
The output folder is built beside ``out_dir`` and swapped in whole; landmarks load
with ``allow_pickle=False`` (a pickled ``.npy`` in the input is refused).
"""
from __future__ import annotations

import json
import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path


from ferdata.atomic import require_dir, staged_dir
from ferdata.geometry import split_halves
from ferdata.heatmap import max_heatmap_u8
from ferdata.io import decode_jpeg_rgb, encode_jpeg, encode_png
from ferdata.layout import ALIGNED, DERIVED, REPORT, SAMPLE_SETTINGS, output_digest, require_made_by
from ferdata.parallel import parallel_map
from ferdata.params import above, at_least, check_values, within
from ferdata.progress import progress
from ferdata.regions import fixed_regions, landmark_regions
from ferdata.report import StageReport
from ferdata.tario import TarShardWriter, iter_dir_samples, load_npy

log = logging.getLogger(__name__)
PREFIX = DERIVED
OWNED = (f"{PREFIX}-*.tar", REPORT)


# Models read the map at their input side / 4 (56 at 224); the 68 Gaussians are drawn at full size before
# their max is taken, 68 x side^2 float32 per face: 4000 took 4 GiB a face and failed mid-stage.
MAX_HEATMAP_SIZE = 256


@dataclass(frozen=True)
class DeriveParams:
    heatmap_size: int
    heatmap_sigma: float
    jpeg_quality: int
    workers: int
    chunk_size: int

    def __post_init__(self) -> None:
        check_values("derive", self, {"heatmap_size": within(1, MAX_HEATMAP_SIZE), "heatmap_sigma": above(0),
                                      "jpeg_quality": within(1, 100), "workers": at_least(1),
                                      "chunk_size": at_least(1)})

    def settings(self) -> dict:
        """What shapes the derived fields: the shards record it, inference repeats it."""
        return {k: getattr(self, k) for k in SAMPLE_SETTINGS["derive"]}


class DeriveWorker:
    """Picklable callable: one aligned sample -> its derived fields under the same key."""

    def __init__(self, params: DeriveParams) -> None:
        self.params = params

    def __call__(self, sample: tuple[str, dict[str, bytes]]) -> tuple[str, dict[str, bytes]]:
        key, fields = sample
        if "jpg" not in fields:
            raise ValueError(f"aligned sample {key!r} has no face image (jpg): its chunk is damaged; re-run align")
        face = decode_jpeg_rgb(fields["jpg"])
        size = face.shape[0]
        left, right = split_halves(face)
        hm_size = self.params.heatmap_size
        regions = {"fixed": fixed_regions(size)}
        out = {}
        if "lmk.npy" in fields:
            lmk = load_npy(fields["lmk.npy"], f"{key}.lmk.npy")
            out["heatmap.png"] = encode_png(max_heatmap_u8(lmk, hm_size, self.params.heatmap_sigma,
                                                              stride=size / hm_size))
            regions["landmarks"] = landmark_regions(lmk, size)
        q = self.params.jpeg_quality
        out.update({"left.jpg": encode_jpeg(left, q), "right.jpg": encode_jpeg(right, q),
                    "regions.json": json.dumps(regions, sort_keys=True).encode()})
        return key, out


def _sample_name(sample: tuple[str, dict[str, bytes]]) -> str:
    return f"aligned sample {sample[0]!r}"


def run_derive(aligned_dir: str | Path, params: DeriveParams, out_dir: str | Path) -> StageReport:
    """Derive fields for every sample of ``aligned_dir`` into ``out_dir`` (replaced as a whole)."""
    require_dir(aligned_dir, "aligned", "run the align stage first")
    require_made_by(aligned_dir, "align", "give the aligned folder, or run the align stage first")
    report = StageReport("derive", settings=params.settings(), inputs={ALIGNED: output_digest(aligned_dir, ALIGNED)})
    samples = iter_dir_samples(aligned_dir, ALIGNED)
    with staged_dir(out_dir, OWNED) as out:
        with (TarShardWriter(out, PREFIX, params.chunk_size) as writer,     # closing: a failure stops the workers
              closing(parallel_map(DeriveWorker(params), samples, params.workers, describe=_sample_name)) as done):
            for key, fields in progress(done, desc="derive", unit="face"):
                writer.write(key, fields)
                report.kept += 1
        report.write(out / REPORT)
    log.info("derive: %d samples", report.kept)
    return report
