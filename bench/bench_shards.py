"""Shard size benchmark: bytes per sample for each field, the AffectNet-scale output estimated
from them, and the compression choices (JPEG quality, PNG heatmaps) as size against fidelity.

Inputs: ``bench_preprocess.make_inputs`` (JPEGs made from the photos that ship inside pip
packages). The real stages run on them: ``run_detect`` (embedded backend), ``run_align``,
``run_derive`` and ``run_shard`` with ``params.yaml``'s values, once at ``align.size`` and once
more at 224 (align/derive/shard only: only the crop size changes). Measured:

* shards: every member of every shard tar, as data bytes and tar overhead (the 512-byte
  header plus the padding of the data to 512 bytes), per field and per sample, plus each
  file's end-of-archive blocks and record padding; the detect table, aligned and derived
  chunk tars per sample;
* AffectNet scale: those bytes per sample times the March-2021 8-class counts
  (``docs/reference/datasets_and_pipeline.md`` 1.2);
* face crops: the uncompressed aligned crops are rebuilt from the detect table the way the
  align stage builds them, then encoded as JPEG at several qualities and as PNG: bytes,
  PSNR, mean/max absolute error and landmark stability (dlib's 68-point predictor re-run on
  the crop, displacement against its result on the uncompressed crop, over the inter-ocular
  distance), next to two yardsticks: the predictor's response to +-1 grey level of noise and
  its own disagreement with the stored landmarks; the halves as derive re-encodes them. The
  quality called justified is the knee of bytes per dB of PSNR among the qualities that move
  landmarks by at most a quarter of the predictor's own noise;
* heatmaps: the stored uint8 PNG against the float32 rendering it quantises (bytes as PNG,
  float32/float16/uint8 ``.npy``, in the tar; quantisation error; shift of the map's centroid).

Prints the tables, then the ratios (last). Usage:
``python bench/bench_shards.py [--quick] [--n N] [--work DIR]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import make_inputs  # noqa: E402
from ferdata.faces.embedded import EmbeddedBackend  # noqa: E402
from ferdata.geometry import split_halves  # noqa: E402
from ferdata.heatmap import gaussian_heatmaps, heatmap_stride, max_heatmap_u8  # noqa: E402
from ferdata.io import BadImage, decode_image, decode_jpeg_rgb, decode_rgb, encode_jpeg, encode_png  # noqa: E402
from ferdata.params import load_params, section  # noqa: E402
from ferdata.records import SPLITS, load_image_bytes, record_from_dict  # noqa: E402
from ferdata.crop import BadGeometry, crop_face  # noqa: E402
from ferdata.stages.align import AlignParams, run_align  # noqa: E402
from ferdata.tario import npy_bytes  # noqa: E402
from ferdata.stages.derive import DeriveParams, run_derive  # noqa: E402
from ferdata.layout import FACES, read_faces  # noqa: E402
from ferdata.stages.detect import DetectParams, run_detect  # noqa: E402
from ferdata.stages.shard import ShardParams, run_shard  # noqa: E402
from ferdata.tario import BLOCK, list_shards, split_member  # noqa: E402
from ferdata.tarscan import iter_members  # noqa: E402

# AffectNet, March-2021 8-class form: train and val counts (datasets_and_pipeline.md 1.2).
AFFECTNET = {"train": 287_651, "val": 3_999}
QUALITIES = (75, 85, 90, 95, 100)
OUTER_EYES = (36, 45)           # iBUG-68 outer eye corners: the 300-W inter-ocular normalisation
UPSCALE = 4                     # dlib returns whole pixels; the crop is enlarged so 1/4 px shows
NOISE_FRACTION = 0.25           # compression may move landmarks by at most this share of predictor noise
DERIVABLE = ("left.jpg", "right.jpg", "heatmap.png", "regions.json")   # rebuilt from jpg + lmk.npy


# -- building real outputs ---------------------------------------------------------------------
def stage_params(work: Path, size: int, workers: int) -> dict:
    """The four stages' params from params.yaml (detect forced to the embedded backend, a fresh
    cache in ``work``; ``size`` replaces ``align.size``)."""
    p = load_params(REPO / "params.yaml")
    det = dataclasses.replace(section(DetectParams, p["detect"], "detect"), backend="embedded",
                              cache_dir=str(work / "cache"), workers=workers)
    return {"detect": det,
            "align": dataclasses.replace(section(AlignParams, p["align"], "align"), size=size, workers=workers),
            "derive": dataclasses.replace(section(DeriveParams, p["derive"], "derive"), workers=workers),
            "shard": section(ShardParams, p["shard"], "shard")}


def build(work: Path, n: int, max_side: int, sizes: tuple[int, ...], workers: int) -> dict[int, Path]:
    """Inputs, one detect table, then aligned/derived/shards per crop size; returns size -> folder."""
    records = make_inputs(work / "inputs", n, max_side)
    run_detect(records, stage_params(work, sizes[0], workers)["detect"], work / "detect")
    out = {}
    for size in sizes:
        p, root = stage_params(work, size, workers), work / f"size{size}"
        run_align(work / "detect", p["align"], root / "aligned")
        run_derive(root / "aligned", p["derive"], root / "derived")
        run_shard(root / "aligned", root / "derived", p["shard"], root / "shards")
        out[size] = root
    return out


# -- tar accounting -----------------------------------------------------------------------------
def tar_accounting(paths: list[Path]) -> dict:
    """Bytes per sample of a set of tars, per field: data, and overhead (header + padding to 512).

    ``trailer`` is the end-of-archive blocks and record padding per sample; per field totals
    plus the trailer add up to the files' size exactly.
    """
    fields: dict[str, dict[str, int]] = {}
    samples = file_bytes = trailer = 0
    for path in paths:
        pos, keys = 0, set()
        for m, _ in iter_members(path, read_data=False):
            key, ext = split_member(m.name)
            keys.add(key)
            pad = -m.size % BLOCK
            f = fields.setdefault(ext, {"data": 0, "overhead": 0, "present": 0})
            f["data"] += m.size
            f["overhead"] += (m.offset_data - pos) + pad           # header block(s) + padding
            f["present"] += 1
            pos = m.offset_data + m.size + pad
        size = path.stat().st_size
        samples, file_bytes, trailer = samples + len(keys), file_bytes + size, trailer + size - pos
    if not samples:
        raise RuntimeError(f"no samples in {len(paths)} tars: the pipeline kept no face")
    per = file_bytes / samples
    table = {ext: {"data": f["data"] / samples, "overhead": f["overhead"] / samples,
                   "total": (f["data"] + f["overhead"]) / samples, "present": f["present"]}
             for ext, f in sorted(fields.items())}
    for row in table.values():
        row["share"] = row["total"] / per
    return {"samples": samples, "files": len(paths), "file_bytes": file_bytes, "per_sample": per,
            "trailer": trailer / samples, "trailer_per_file": trailer / len(paths), "fields": table}


def at_scale(acct: dict, per_file: int) -> float:
    """Bytes per sample once every tar is full (``per_file`` samples): the benchmark's few
    samples share each tar's end-of-archive padding among fewer samples than a real run."""
    return acct["per_sample"] - acct["trailer"] + acct["trailer_per_file"] / per_file


def shard_paths(shards: Path) -> list[Path]:
    return [p for split in SPLITS for p in list_shards(shards / split, split)]


def outputs_per_sample(work: Path, root: Path, shards: dict, p: dict) -> dict[str, float]:
    """Bytes per kept face of each stage output at full scale: the detect table per row, and the
    aligned, derived and shard tars with every tar full (chunk sizes from params.yaml)."""
    rows = sum(1 for _ in read_faces(work / "detect"))
    aligned = tar_accounting(list_shards(root / "aligned", "aligned"))
    derived = tar_accounting(list_shards(root / "derived", "derived"))
    return {"detect_table": (work / "detect" / FACES).stat().st_size / rows,
            "aligned": at_scale(aligned, p["align"].chunk_size), "derived": at_scale(derived, p["derive"].chunk_size),
            "shards": at_scale(shards, p["shard"].maxcount)}


def affectnet_gb(per_sample: float) -> float:
    return per_sample * sum(AFFECTNET.values()) / 1e9


# -- uncompressed crops and their fidelity ------------------------------------------------------
def raw_crops(detect_dir: Path, size: int, padding: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uncompressed aligned crop, crop-frame 68 landmarks) per detect row with 68 landmarks, as
    the align stage crops them (``crop_face``: a large face warped from a reduced decode, the
    backend's border), before any JPEG encode."""
    out = []
    for row in read_faces(detect_dir):
        data = load_image_bytes(record_from_dict(row["record"]))
        try:
            al, _ = crop_face(row["face"], row["backend"], size, padding, lambda reduce: decode_image(data, reduce))
        except (BadImage, BadGeometry):
            continue                           # the align stage drops these rows too
        if al.lmk68 is not None:
            out.append((al.image, al.lmk68))
    return out


def dlib_points(backend: EmbeddedBackend, crop: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points on ``crop`` (enlarged ``UPSCALE`` times, back in crop pixels)."""
    big = cv2.resize(crop, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    pts = backend.landmarks(big, (np.asarray(box, np.float64) + 0.5) * UPSCALE - 0.5)
    return (pts + 0.5) / UPSCALE - 0.5


def displacement(a: np.ndarray, b: np.ndarray, lmk: np.ndarray) -> float:
    """Mean point distance between two 68-point sets over the inter-ocular distance of ``lmk``."""
    iod = float(np.linalg.norm(lmk[OUTER_EYES[0]] - lmk[OUTER_EYES[1]]))
    return float(np.linalg.norm(a - b, axis=1).mean()) / iod


SETTINGS = (*(f"jpeg q{q}" for q in QUALITIES), "png")


def roundtrip(setting: str, crop: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``crop`` encoded as ``setting`` ("jpeg qNN" or "png"), and decoded back."""
    data = encode_png(crop) if setting == "png" else encode_jpeg(crop, int(setting[6:]))
    return data, decode_rgb(data)


def crop_fidelity(crops: list[tuple[np.ndarray, np.ndarray]], backend: EmbeddedBackend) -> dict:
    """Per codec setting: mean bytes, PSNR (of the pooled error), mean/max abs error and landmark
    displacement against the uncompressed crop. Two yardsticks for the displacement: ``reference``,
    the predictor against the stored landmarks (its own noise when box and resolution change),
    and ``floor``, the predictor's response to +-1 grey level of random noise (imperceptible)."""
    acc = {name: {"bytes": 0.0, "sq": 0.0, "abs": 0.0, "max": 0.0, "nme": 0.0} for name in SETTINGS}
    ref_nme = floor_nme = 0.0
    rng = np.random.default_rng(0)
    for crop, lmk in crops:
        box = np.concatenate([lmk.min(0), lmk.max(0)])
        base = dlib_points(backend, crop, box)
        ref_nme += displacement(base, lmk, lmk)
        noisy = np.clip(crop.astype(np.int16) + rng.integers(-1, 2, crop.shape), 0, 255).astype(np.uint8)
        floor_nme += displacement(dlib_points(backend, noisy, box), base, lmk)
        for name in SETTINGS:
            data, img = roundtrip(name, crop)
            err = np.abs(img.astype(np.int16) - crop.astype(np.int16))
            a = acc[name]
            a["bytes"] += len(data)
            a["sq"] += float(np.mean(err.astype(np.float64) ** 2))
            a["abs"] += float(err.mean())
            a["max"] = max(a["max"], float(err.max()))
            a["nme"] += displacement(dlib_points(backend, img, box), base, lmk)
    k = len(crops)
    out = {name: {"bytes": a["bytes"] / k, "mae": a["abs"] / k, "max_err": a["max"], "nme": a["nme"] / k,
                  "psnr": pooled_psnr(a["sq"], k)}
           for name, a in acc.items()}
    return {"settings": out, "reference_nme": ref_nme / k, "floor_nme": floor_nme / k, "crops": k}


def pooled_psnr(sum_mse: float, count: int) -> float:
    return math.inf if sum_mse == 0 else 10 * math.log10(255.0 ** 2 / (sum_mse / count))


def halves_fidelity(crops: list[tuple[np.ndarray, np.ndarray]], quality: int, derive_quality: int) -> dict[str, float]:
    """The halves as derive stores them (cut from the crop decoded from JPEG ``quality``, encoded
    again at ``derive_quality``: a second generation) against halves of the uncompressed crop:
    PSNR and the bytes of both halves."""
    sq = nbytes = 0.0
    for crop, _ in crops:
        decoded = decode_jpeg_rgb(encode_jpeg(crop, quality))
        for raw, stored in zip(split_halves(crop), split_halves(decoded)):
            data = encode_jpeg(stored, derive_quality)
            nbytes += len(data)
            sq += float(np.mean((decode_jpeg_rgb(data).astype(np.float64) - raw) ** 2)) / 2
    return {"psnr": pooled_psnr(sq, len(crops)), "bytes": nbytes / len(crops)}


def in_tar(nbytes: float) -> float:
    """Bytes a member of ``nbytes`` occupies in a tar: its header plus data padded to 512."""
    return BLOCK + math.ceil(nbytes / BLOCK) * BLOCK


def heatmap_fidelity(crops: list[tuple[np.ndarray, np.ndarray]], size: int, hm: int, sigma: float) -> dict:
    """The stored uint8 PNG map against the float32 map it quantises: bytes per encoding (raw and
    in a tar), max/mean absolute error (0..1 scale) and the shift of the map's centroid (crop px)."""
    stride = heatmap_stride(size, hm)
    sums = {"png": 0.0, "npy f32": 0.0, "npy f16": 0.0, "npy u8": 0.0, "npy 68ch f16": 0.0}
    tar = dict.fromkeys(sums, 0.0)
    max_err = mean_err = shift = 0.0
    grid = (np.arange(hm) + 0.5) * stride - 0.5
    for _, lmk in crops:
        full = gaussian_heatmaps(lmk, hm, sigma, stride)          # (68, hm, hm) float32
        f32 = full.max(axis=0)
        u8 = max_heatmap_u8(lmk, hm, sigma, stride)
        for name, data in (("png", encode_png(u8)), ("npy f32", npy_bytes(f32)),
                           ("npy f16", npy_bytes(f32.astype(np.float16))), ("npy u8", npy_bytes(u8)),
                           ("npy 68ch f16", npy_bytes(full.astype(np.float16)))):
            sums[name] += len(data)
            tar[name] += in_tar(len(data))
        err = np.abs(u8 / 255.0 - f32)
        max_err, mean_err = max(max_err, float(err.max())), mean_err + float(err.mean())
        shift += float(np.linalg.norm(centroid(u8 / 255.0, grid) - centroid(f32, grid)))
    k = len(crops)
    return {"bytes": {n: v / k for n, v in sums.items()}, "tar_bytes": {n: v / k for n, v in tar.items()},
            "max_err": max_err, "mean_err": mean_err / k, "centroid_shift_px": shift / k,
            "bound": 0.5 / 255}


def centroid(m: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mass-weighted (x, y) of a map, in crop pixels."""
    total = float(m.sum())
    return np.array([float((m.sum(0) * grid).sum()) / total, float((m.sum(1) * grid).sum()) / total])


# -- report ---------------------------------------------------------------------------------------
def print_fields(acct: dict, size: int) -> None:
    print(f"\nshards at {size} px: {acct['samples']} samples in {acct['files']} tars, "
          f"{acct['per_sample']:,.0f} bytes/sample")
    print(f"  {'field':<14}{'data B':>9}{'tar overhead B':>16}{'total B':>10}{'share':>8}   present")
    for ext, f in acct["fields"].items():
        print(f"  {ext:<14}{f['data']:9.0f}{f['overhead']:16.0f}{f['total']:10.0f}{f['share']:8.1%}"
              f"   {f['present']}/{acct['samples']}")
    print(f"  {'end of archive':<14}{'':9}{acct['trailer']:16.0f}{acct['trailer']:10.0f}"
          f"{acct['trailer'] / acct['per_sample']:8.1%}   (2 zero blocks + padding to 10 KiB, per shard)")
    over = sum(f["overhead"] for f in acct["fields"].values()) + acct["trailer"]
    print(f"  {'all':<14}{acct['per_sample'] - over:9.0f}{over:16.0f}{acct['per_sample']:10.0f}{1:8.0%}")
    small = [f for f in acct["fields"].values() if f["data"] < BLOCK * 2]
    print(f"  fields under 1 KiB ({len(small)}): {sum(f['data'] for f in small):,.0f} B of data take "
          f"{sum(f['total'] for f in small):,.0f} B in the tar (a 512 B header and padding to 512 B each)")


def print_estimate(stages: dict[int, dict], shards: dict[int, dict]) -> None:
    n = sum(AFFECTNET.values())
    print(f"\nAffectNet-scale estimate ({AFFECTNET['train']:,} train + {AFFECTNET['val']:,} val = {n:,} faces; "
          "real-photo inputs, params.yaml settings, only the crop size varies)")
    print(f"  {'output':<30}" + "".join(f"{f'{s} px B/face':>15}{f'{s} px GB':>11}" for s in stages))
    for key, label in (("detect_table", "detect table (faces.jsonl.gz)"), ("aligned", "aligned chunk tars"),
                       ("derived", "derived chunk tars"), ("shards", "shards")):
        print(f"  {label:<30}" + "".join(f"{st[key]:15,.0f}{affectnet_gb(st[key]):11.2f}" for st in stages.values()))
    total = {s: sum(st[k] for k in ("detect_table", "aligned", "derived", "shards")) for s, st in stages.items()}
    print(f"  {'all four outputs':<30}" + "".join(f"{t:15,.0f}{affectnet_gb(t):11.2f}" for t in total.values()))
    for s, acct in shards.items():
        fields = acct["fields"]
        derivable = sum(fields[e]["total"] for e in DERIVABLE if e in fields)
        print(f"  {s} px: fields derivable at load time from jpg + lmk.npy ({', '.join(DERIVABLE)}) "
              f"{derivable:,.0f} B/face = {derivable / acct['per_sample']:.0%} of the shards, "
              f"{affectnet_gb(derivable):.2f} GB")


def print_crops(fid: dict, halves: dict[int, dict], quality: int, size: int) -> None:
    s = fid["settings"]
    print(f"\naligned {size} px crops ({fid['crops']} faces) against the uncompressed crop; landmark "
          "displacement: dlib re-run on the crop, mean over 68 points / inter-ocular distance; halves: cut "
          "from the decoded crop and encoded again at the same quality (as derive does)")
    print(f"  {'setting':<12}{'bytes':>8}{'PSNR dB':>9}{'MAE':>7}{'max err':>9}{'lmk % IOD':>11}"
          f"{'halves B':>10}{'halves PSNR':>13}")
    for name, r in s.items():
        q = int(name[6:]) if name.startswith("jpeg q") else None
        h = f"{halves[q]['bytes']:10.0f}{halves[q]['psnr']:13.2f}" if q in halves else f"{'':23}"
        mark = "  <- params.yaml" if q == quality else ""
        print(f"  {name:<12}{r['bytes']:8.0f}{r['psnr']:9.2f}{r['mae']:7.2f}{r['max_err']:9.0f}"
              f"{100 * r['nme']:11.3f}{h}{mark}")
    print(f"  yardsticks for the landmark column: +-1 grey level of random noise moves them "
          f"{100 * fid['floor_nme']:.3f}% IOD; the predictor against the stored landmarks (same face, other "
          f"box and resolution) {100 * fid['reference_nme']:.2f}% IOD")


def print_heatmaps(h: dict, hm: int, sigma: float) -> None:
    print(f"\nheatmap {hm}x{hm}, sigma {sigma} cells: stored uint8 PNG vs the float32 map it quantises")
    print(f"  {'encoding':<14}{'bytes':>8}{'in tar':>8}")
    for name, b in h["bytes"].items():
        print(f"  {name:<14}{b:8.0f}{h['tar_bytes'][name]:8.0f}")
    print(f"  quantisation error (0..1): max {h['max_err']:.5f} (bound 0.5/255 = {h['bound']:.5f}), mean "
          f"{h['mean_err']:.6f}; centroid shift {h['centroid_shift_px']:.4f} crop px")


def cost_per_db(settings: dict) -> dict[tuple[int, int], float]:
    """Extra crop bytes per extra dB of PSNR for each step between consecutive JPEG qualities
    (infinite where a step gains nothing)."""
    out = {}
    for lo, hi in zip(QUALITIES, QUALITIES[1:]):
        a, b = settings[f"jpeg q{lo}"], settings[f"jpeg q{hi}"]
        gain = b["psnr"] - a["psnr"]
        out[(lo, hi)] = (b["bytes"] - a["bytes"]) / gain if gain > 0 else math.inf
    return out


def choose_quality(settings: dict, reference: float) -> int | None:
    """The knee of the size/fidelity curve among the qualities whose landmark displacement is at
    most ``NOISE_FRACTION`` x the predictor's own noise: the quality after which the bytes paid
    per dB of PSNR jump the most. None when no quality keeps the landmarks."""
    ok = [q for q in QUALITIES if settings[f"jpeg q{q}"]["nme"] <= NOISE_FRACTION * reference]
    if not ok:
        return None
    cost = cost_per_db(settings)
    steps = list(zip(QUALITIES, QUALITIES[1:]))
    jumps = {steps[i][0]: cost[steps[i]] / cost[steps[i - 1]] for i in range(1, len(steps))}
    candidates = [q for q in ok if q in jumps]
    return max(candidates, key=lambda q: jumps[q]) if candidates else ok[0]


def print_justification(m: dict, quick: bool = False) -> None:
    """Why params.yaml's settings hold (or not), from the measured numbers (``quick``: computed as
    ever, but said to judge nothing)."""
    fid, heat, halves, q = m["crops"], m["heatmap"], m["halves"], m["quality"]
    s, ref, acct = fid["settings"], fid["reference_nme"], m["shards"][m["size"]]
    chosen, cur = m["chosen_quality"], s[f"jpeg q{q}"]
    worst = max(s[f"jpeg q{x}"]["nme"] for x in QUALITIES)
    judged = ": n/a (--quick: computed on a few images, judging nothing)" if quick else ""
    print(f"\ncompression choices (params.yaml: align q{q}, derive q{m['derive_quality']}){judged}")
    print(f"  landmarks: every JPEG quality moves them {100 * min(s[f'jpeg q{x}']['nme'] for x in QUALITIES):.2f}-"
          f"{100 * worst:.2f}% IOD, {worst / fid['floor_nme']:.1f}x at most what +-1 grey level of noise does and "
          f"at most {worst / ref:.0%} of the predictor's own noise (limit {NOISE_FRACTION:.0%}: added in quadrature it "
          f"raises that noise by at most {math.hypot(1, NOISE_FRACTION) - 1:.0%})")
    steps = ", ".join(f"q{lo}->q{hi} {c:,.0f}" for (lo, hi), c in cost_per_db(s).items())
    print(f"  crop bytes per dB of PSNR gained: {steps}")
    if chosen is None:
        print(f"  no JPEG quality keeps the landmarks within {NOISE_FRACTION:.0%} of the predictor's noise: "
              "store the crop losslessly (PNG) or raise the quality range")
    elif chosen == q:
        nxt = QUALITIES[QUALITIES.index(q) + 1]
        costs = cost_per_db(s)
        prev = [c for (lo, hi), c in costs.items() if hi == q]
        jump = f" ({costs[(q, nxt)] / prev[0]:.1f}x the step before)" if prev else ""
        print(f"  params.yaml's q{q} is the knee: the last quality before the cost per dB jumps most{jump}; "
              f"PSNR {cur['psnr']:.1f} dB (halves, second generation, {halves[q]['psnr']:.1f} dB), MAE "
              f"{cur['mae']:.2f} grey levels, {cur['bytes']:,.0f} B")
    else:
        alt = s[f"jpeg q{chosen}"]
        extra = cur["bytes"] + halves[q]["bytes"] - alt["bytes"] - halves[chosen]["bytes"]
        print(f"  the knee is q{chosen}, not params.yaml's q{q}: crop + halves at q{q} {extra:+,.0f} B/face "
              f"({extra / acct['per_sample']:+.0%} of the shards, {affectnet_gb(extra):+.2f} GB at AffectNet scale) "
              f"for {cur['psnr'] - alt['psnr']:+.1f} dB on the crop")
    png = s["png"]
    moved = "moves no landmark beyond" if cur["nme"] <= NOISE_FRACTION * ref else "moves landmarks beyond"
    print(f"  lossless PNG crop: {png['bytes'] / cur['bytes']:.1f}x the q{q} bytes "
          f"({affectnet_gb(png['bytes'] - cur['bytes']):+.2f} GB at AffectNet scale) to remove an error of "
          f"MAE {cur['mae']:.2f} grey levels (PSNR {cur['psnr']:.1f} dB) that {moved} the limit above")
    hm_field = acct["fields"].get("heatmap.png", {"total": 0.0})["total"]
    print(f"  heatmap: PNG {heat['bytes']['png']:.0f} B vs float32 npy {heat['bytes']['npy f32']:.0f} B "
          f"({heat['tar_bytes']['png']:.0f} vs {heat['tar_bytes']['npy f32']:.0f} in the tar, where raw uint8 npy "
          f"takes {heat['tar_bytes']['npy u8']:.0f}); the uint8 error is at most {heat['max_err']:.4f} of the peak "
          f"and moves the map's centroid {heat['centroid_shift_px']:.3f} px; the field is "
          f"{hm_field / acct['per_sample']:.0%} of the shards (0 if rendered from lmk.npy at load time)")


def ratios(m: dict) -> dict[str, float]:
    s, fid, heat, q = m["crops"]["settings"], m["crops"], m["heatmap"], m["quality"]
    acct = m["shards"][m["size"]]
    over = sum(f["overhead"] for f in acct["fields"].values()) + acct["trailer"]
    r = {"bytes_q90_over_q95": s["jpeg q90"]["bytes"] / s["jpeg q95"]["bytes"],
         "bytes_q95_over_q100": s["jpeg q95"]["bytes"] / s["jpeg q100"]["bytes"],
         "bytes_png_over_q95": s["png"]["bytes"] / s["jpeg q95"]["bytes"],
         "lmk_params_q_over_floor": s[f"jpeg q{q}"]["nme"] / fid["floor_nme"],
         "lmk_params_q_over_noise": s[f"jpeg q{q}"]["nme"] / fid["reference_nme"],
         "heatmap_png_over_f32_npy": heat["bytes"]["png"] / heat["bytes"]["npy f32"],
         "heatmap_png_over_f32_npy_in_tar": heat["tar_bytes"]["png"] / heat["tar_bytes"]["npy f32"],
         "shard_overhead_fraction": over / acct["per_sample"],
         "jpg_share_of_shard": acct["fields"]["jpg"]["total"] / acct["per_sample"]}
    if 224 in m["shards"] and m["size"] != 224:
        r["shard_bytes_224_over_112"] = m["stages"][224]["shards"] / m["stages"][m["size"]]["shards"]
    return r


def print_ratios(r: dict[str, float], size: int, quality: int) -> None:
    labels = {"bytes_q90_over_q95": "crop bytes JPEG q90 / q95",
              "bytes_q95_over_q100": "crop bytes JPEG q95 / q100",
              "bytes_png_over_q95": "crop bytes PNG / JPEG q95",
              "lmk_params_q_over_floor": f"landmark move at q{quality} / +-1 grey level noise",
              "lmk_params_q_over_noise": f"landmark move at q{quality} / predictor's own noise",
              "heatmap_png_over_f32_npy": "heatmap bytes PNG / float32 npy",
              "heatmap_png_over_f32_npy_in_tar": "the same in the tar (headers, padding)",
              "shard_overhead_fraction": f"tar overhead / shard bytes ({size} px)",
              "jpg_share_of_shard": f"face jpg / shard bytes ({size} px)",
              "shard_bytes_224_over_112": f"shard bytes per face, 224 px / {size} px (full tars)"}
    print("\nratios")
    for key, value in r.items():
        print(f"  {labels[key]:<54}{value:8.3f}")


# -- entry point ----------------------------------------------------------------------------------
def measure(work: Path, n: int, max_side: int, workers: int) -> dict:
    """Build the outputs at ``align.size`` and at 224, then measure sizes and fidelity."""
    params = load_params(REPO / "params.yaml")
    size, padding = params["align"]["size"], params["align"]["padding"]
    hm, sigma = params["derive"]["heatmap_size"], params["derive"]["heatmap_sigma"]
    roots = build(work, n, max_side, tuple(dict.fromkeys((size, 224))), workers)
    shards = {s: tar_accounting(shard_paths(root / "shards")) for s, root in roots.items()}
    stages = {s: outputs_per_sample(work, root, shards[s], stage_params(work, s, workers)) for s, root in roots.items()}
    crops = raw_crops(work / "detect", size, padding)
    fid = crop_fidelity(crops, EmbeddedBackend())
    halves = {q: halves_fidelity(crops, q, q) for q in QUALITIES}
    m = {"size": size, "hm": hm, "sigma": sigma, "quality": params["align"]["jpeg_quality"],
         "derive_quality": params["derive"]["jpeg_quality"], "shards": shards, "stages": stages,
         "crops": fid, "halves": halves, "heatmap": heatmap_fidelity(crops, size, hm, sigma)}
    m["chosen_quality"] = choose_quality(fid["settings"], fid["reference_nme"])
    return m


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 small images, one process (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="input images (default 200; quick 8)")
    ap.add_argument("--max-side", type=int, default=None, help="longest input side (default 640; quick 320)")
    ap.add_argument("--workers", type=int, default=None, help="stage processes (default params.yaml; quick 1)")
    ap.add_argument("--work", type=Path, default=None, help="keep the outputs in this folder (default: a temp dir)")
    args = ap.parse_args(argv)
    n = args.n or (8 if args.quick else 200)
    max_side = args.max_side or (320 if args.quick else 640)
    workers = args.workers or (1 if args.quick else load_params(REPO / "params.yaml")["align"]["workers"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        m = measure(work, n, max_side, workers)
    m["elapsed_s"] = time.perf_counter() - t0
    print(f"inputs: {n} JPEGs from package photos, longest side {max_side // 2}-{max_side} px, "
          f"{m['shards'][m['size']]['samples']} faces in the shards; embedded backend; {os.cpu_count()} CPUs, "
          f"{workers} worker(s); {m['elapsed_s']:.0f} s")
    for s, acct in m["shards"].items():
        print_fields(acct, s)
    print_estimate(m["stages"], m["shards"])
    print_crops(m["crops"], m["halves"], m["quality"], m["size"])
    print_heatmaps(m["heatmap"], m["hm"], m["sigma"])
    print_justification(m, args.quick)
    m["ratios"] = ratios(m)
    print_ratios(m["ratios"], m["size"], m["quality"])
    return m


if __name__ == "__main__":
    main()
