"""Shard splits and batches: WebDataset tars -> uint8 batches holding exactly the fields a model declares.

A :class:`Split` is what a split's ``_info.json`` files say of it; :class:`SampleDecoder` turns one raw
sample into uint8 arrays of the model's fields (at the side batches travel at); :func:`decode_batch`
decodes raw samples straight into a batch (every loader: training stream, evaluation, inference);
:func:`to_device` moves a batch to the training device (pixels stay uint8 unless scaled there to
the model's side), and :func:`normalise` makes it float model input. The loaders built on these live
in :mod:`fermodels.stream` (training) and :mod:`fermodels.indexed` (evaluation). Tar members are read
with ferdata's safe reader (no links, no ``..``, no pickles).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ferdata.classes import CLASSES
from ferdata.io import decode_jpeg_rgb, read_header
from ferdata.layout import INFO
from ferdata.records import LABEL_MODE, SOFT_LABEL
from ferdata.tario import iter_tar_samples, listed_shard, load_npy
from fermodels.batchring import copy_out
from fermodels.losses import TARGET_KINDS
from fermodels.registry import ModelCard

log = logging.getLogger(__name__)
MEMBERS = {"image": "jpg", "left": "left.jpg", "right": "right.jpg", "heatmap": "heatmap.png", "lmk": "lmk.npy"}
LANDMARKS = 68


@dataclass(frozen=True)
class Split:
    """One split of one or more prepared datasets, as their ``_info.json`` files describe it
    (``subsets``: the named test subsets of a reader's ``options.subsets``, listed by the shard stage)."""

    name: str
    dirs: tuple[str, ...]
    shards: tuple[tuple[str, int], ...]          # (tar path, sample count)
    histogram: dict[str, int]                   # canonical class name -> count
    hashes: dict[str, list[str]]                # shard dir -> sha256 of each shard
    subsets: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # shard dir -> test subset -> keys
    soft_labels: dict[str, int] = field(default_factory=dict)  # label mode -> samples with a distribution to train on
    face_backends: dict[str, int] = field(default_factory=dict)  # face backend -> samples whose crop it made
    preprocess: dict = field(default_factory=dict)   # align/derive settings that made the faces ({}: not recorded)
    face_backend_options: dict[str, dict] = field(default_factory=dict)   # face backend -> the options it ran with

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)

    def shards_of(self, shard_dir: str) -> tuple[tuple[str, int], ...]:
        """The shards that ``shard_dir``'s ``_info.json`` lists (``shards`` holds every dir's, in
        ``dirs`` order; ``hashes`` one sha256 per shard)."""
        start = sum(len(self.hashes[d]) for d in self.dirs[:self.dirs.index(shard_dir)])
        return self.shards[start:start + len(self.hashes[shard_dir])]

    def class_counts(self, num_classes: int) -> list[int]:
        return [self.histogram.get(c, 0) for c in CLASSES[:num_classes]]

    def classes_beyond(self, num_classes: int) -> dict[str, int]:
        """Samples whose class a ``num_classes`` model cannot predict (e.g. Contempt for 7)."""
        return {c: n for c, n in self.histogram.items() if n and CLASSES.index(c) >= num_classes}


def _listed_on_disk(info_path: Path, listed: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(path, sample count) of each shard ``_info.json`` lists, after checking that each is there
    with its listed size (a stat each; ``ferdata verify`` compares the contents with their sha256)."""
    out = []
    for s in listed:
        path = listed_shard(info_path.parent, s["name"])
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}, listed in {info_path}, is missing: `dvc pull` / `dvc checkout` it, or "
                                    "re-run the shard stage") from None
        if "bytes" in s and size != s["bytes"]:
            raise ValueError(f"{path} is {size} bytes where {info_path} lists {s['bytes']}: cut short or replaced "
                             "since it was written; check the split with `ferdata verify`, then re-run the shard "
                             "stage (or `dvc pull` / `dvc checkout` it)")
        out.append((str(path), int(s["count"])))
    return out


def open_split(shard_dirs: Sequence[str | Path], split: str) -> Split:
    """Read ``<dir>/<split>/_info.json`` of every shard dir (one per training dataset); each shard
    it lists must be there with its listed size."""
    if len({Path(d).resolve() for d in shard_dirs}) < len(shard_dirs):
        raise ValueError(f"shard dirs listed more than once: {[str(d) for d in shard_dirs]} (each would be read "
                         "twice an epoch)")
    shards, hist, hashes, subsets, soft, backends = [], Counter(), {}, {}, Counter(), Counter()
    settings: dict[str, dict] = {}
    detectors: dict[str, dict] = {}                   # shard dir -> face backend -> options
    for d in shard_dirs:
        info_path = Path(d) / split / INFO
        if not info_path.is_file():
            inside = Path(d) / "shards"
            if (inside / split / INFO).is_file():
                raise FileNotFoundError(f"{info_path} not found: {d} is a dataset's folder; give its shards "
                                        f"folder, {inside}")
            raise FileNotFoundError(f"{info_path} not found: prepare the dataset first "
                                    f"(`dvc repro shard@<name>` or `ferdata prepare <name>`)")
        info = json.loads(info_path.read_text())
        if info.get("split", split) != split:
            raise ValueError(f"{info_path} describes the {info['split']!r} split, not {split!r}: split folders "
                             "swapped or renamed in a copy? (`ferdata verify` checks a copy)")
        shards += _listed_on_disk(info_path, info["shards"])
        hist.update(info["class_histogram"])
        hashes[str(d)] = [s["sha256"] for s in info["shards"]]
        subsets[str(d)] = {name: frozenset(keys) for name, keys in info.get("subsets", {}).items()}
        soft.update(info.get("soft_labels", {}))
        backends.update(info.get("face_backends", {}))
        settings[str(d)] = info.get("preprocess") or {}
        if info.get("detect"):                        # auto's options went to each backend it used
            detectors[str(d)] = {name: info["detect"]["options"] for name in info.get("face_backends", {})}
    return Split(split, tuple(str(d) for d in shard_dirs), tuple(shards), dict(hist), hashes, subsets, dict(soft),
                 dict(sorted(backends.items())), _one_preprocess(settings, split), _backend_options(detectors))


def _backend_options(detectors: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Each face backend's options over all datasets; a backend run with different options for
    two datasets is left out (inference then builds it with its own defaults), with a warning."""
    merged: dict[str, dict] = {}
    differing: set[str] = set()
    for per_backend in detectors.values():
        for name, options in per_backend.items():
            if merged.setdefault(name, options) != options:
                differing.add(name)
    if differing:
        log.warning("face backend(s) %s ran with different options for different datasets: inference will "
                    "not repeat either (pass --backend-option)", ", ".join(sorted(differing)))
    return {name: options for name, options in sorted(merged.items()) if name not in differing}


def _one_preprocess(settings: dict[str, dict], split: str) -> dict:
    """The align/derive settings all datasets' faces share ({} when one did not record them); faces
    cropped or derived differently cannot feed one model, whose checkpoint records one way."""
    if not all(settings.values()):
        return {}
    distinct = {json.dumps(v, sort_keys=True) for v in settings.values()}
    if len(distinct) > 1:
        shown = "; ".join(f"{d}: {v}" for d, v in settings.items())
        raise ValueError(f"the {split} shards were prepared with different align/derive settings ({shown}); "
                         "prepare every dataset with the same align and derive sections")
    return next(iter(settings.values()))


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable map: raw sample (ext -> bytes) -> uint8 arrays for ``fields`` at the ``wire``
    side (default: the model's ``size``). Batches travel at ``wire`` and
    ``to_device(batch, device, size)`` scales them to the model's side on the device: with
    ``wire`` = the stored crop side (:func:`travel_side`), a 224 px model fed 112 px shards costs
    the workers no resize and the hand-off a quarter of the bytes. With ``targets`` it also reads
    each sample's label distribution (``json``: FERPlus votes in a training label mode) into
    ``target`` (one-hot of the label when it has none) and ``target_kind`` (how the loss uses it,
    :data:`fermodels.losses.TARGET_KINDS`)."""

    fields: tuple[str, ...]
    size: int
    wire: int | None = None
    targets: bool = False

    @property
    def side(self) -> int:
        """The side of the images this decoder makes."""
        return self.wire or self.size

    @property
    def members(self) -> frozenset[str]:
        """The tar member extensions this decoder reads (a sample's label and its fields)."""
        return frozenset({"cls", *(MEMBERS[f] for f in self.fields), MEMBERS["image"],
                          *(("json",) if self.targets else ())})

    def __call__(self, s: dict) -> dict:
        key, side = s["__key__"], self.side
        img = decode_jpeg_rgb(_member(s, "jpg", key))
        src = img.shape[0]
        out = {"image": _resize(img, side, side), "label": sample_label(s), "key": key}
        for name in ("left", "right"):
            if name in self.fields:
                out[name] = _resize(decode_jpeg_rgb(_member(s, MEMBERS[name], key)), side, side // 2)
        if "heatmap" in self.fields:
            out["heatmap"] = _resize(decode_jpeg_rgb(_member(s, "heatmap.png", key)), side // 4, side // 4)
        if "lmk" in self.fields:
            lmk = load_npy(_member(s, "lmk.npy", key), f"{key}.lmk.npy").astype(np.float32)
            out["lmk"] = (lmk + 0.5) * (side / src) - 0.5          # pixel-centre convention
        if self.targets:
            out["target"], out["target_kind"] = label_target(_member(s, "json", key), out["label"], key)
        return out

    def collate(self, raw: Sequence[dict]) -> dict:
        """A model's batch of ``raw`` samples (a DataLoader ``collate_fn``; picklable with the decoder)."""
        fields, keys = decode_batch(self, raw)
        return assemble(fields, {"key": keys})

    def layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-sample shape and dtype of each batch field of this decoder's samples (what
        :func:`decode_batch` fills; the loader's shared buffers are made from it)."""
        side = self.side
        shapes = {"image": (side, side, 3), "left": (side, side // 2, 3), "right": (side, side // 2, 3),
                  "heatmap": (side // 4, side // 4), "lmk": (LANDMARKS, 2)}
        targets = {"target": ((len(CLASSES),), torch.float32), "target_kind": ((), torch.int64)}
        return {"label": ((), torch.int64),
                **{f: (shapes[f], torch.float32 if f == "lmk" else torch.uint8)
                   for f in FIELDS if f == "image" or f in self.fields},
                **(targets if self.targets else {})}


def label_target(meta: bytes, label: int, key: str) -> tuple[np.ndarray, int]:
    """A sample's training target from its ``json`` member: (distribution over the canonical
    classes, kind) when it carries one in a training label mode, else (one-hot of ``label``, 0)."""
    extra = json.loads(meta).get("extra") or {}
    mode = extra.get(LABEL_MODE, "majority")
    if SOFT_LABEL not in extra or mode == "majority":
        target = np.zeros(len(CLASSES), np.float32)
        target[label] = 1.0
        return target, TARGET_KINDS["crossentropy"]          # one-hot: plain cross-entropy
    if mode not in TARGET_KINDS:
        raise ValueError(f"sample {key!r}: label mode {mode!r} unknown; known: {', '.join(TARGET_KINDS)}")
    target = np.asarray(extra[SOFT_LABEL], np.float32)
    if target.shape != (len(CLASSES),) or not np.isfinite(target).all() or target.min() < 0 or target.sum() <= 0:
        raise ValueError(f"sample {key!r}: {SOFT_LABEL} must be {len(CLASSES)} non-negative numbers with a "
                         f"positive sum, got {extra[SOFT_LABEL]!r}")
    return target, TARGET_KINDS[mode]


def split_decoder(card: ModelCard, split: Split, device: torch.device) -> SampleDecoder:
    """The decoder of a model's inputs read from ``split`` for a model on ``device``."""
    return SampleDecoder(card.fields, card.input_size, wire=travel_side(card.input_size, stored_side(split), device))


def travel_side(size: int, stored: int, device: torch.device) -> int | None:
    """The side batches for a ``size`` model on ``device`` travel at, from faces stored at
    ``stored``: on an accelerator the stored side (shrinking stays in the workers, where it cuts
    the hand-off), scaled to ``size`` there; on the CPU None: the workers resize, in parallel,
    what the main process would otherwise resize alone."""
    return min(stored, size) if device.type != "cpu" else None


def stored_side(split: Split) -> int:
    """The crop side of ``split``'s faces: the align size the shards record, else (shards of a
    version that did not record it) read from each dataset's first face, the smallest when
    datasets differ."""
    if split.preprocess:
        return int(split.preprocess["align"]["size"])
    sides: dict[str, int] = {}
    for path, _ in split.shards:
        folder = str(Path(path).parent)
        if folder not in sides:
            image = next((f["jpg"] for _, f in iter_tar_samples(path) if "jpg" in f), None)
            if image is not None:           # a shard without faces: the folder's next one
                head = read_header(image)
                sides[folder] = min(head.width, head.height)
    if not sides:
        raise ValueError(f"no face image in the {split.name} shards of {', '.join(split.dirs)}")
    return min(sides.values())


def sample_label(s: dict) -> int:
    """The class id of a raw sample (its ``cls`` member)."""
    return int(_member(s, "cls", s["__key__"]))


def _member(s: dict, ext: str, key: str) -> bytes:
    if ext not in s:
        where = f" of {s['__url__']}" if "__url__" in s else ""
        raise ValueError(f"sample {key!r}{where} has no {ext!r} but the model needs it; " + (
            "every sample has one: its shard is damaged (`ferdata verify` checks the split)" if ext in ("jpg", "cls")
            else "re-run derive/shard, or prepare the dataset with a backend that gives 68 landmarks"))
    return s[ext]


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear when enlarging; area averaging when shrinking (bilinear there reads 4 of every
    r x r source pixels: a 224 px crop fed to a 112 px model, or a 56-cell heatmap to 28, aliased)."""
    if img.shape[:2] == (height, width):
        return img
    shrink = height < img.shape[0] or width < img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode_batch(decoder: SampleDecoder, raw: Sequence[dict],
                 empty: Callable[..., torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``raw`` samples decoded straight into batch tensors made by ``empty(name, shape, dtype)``
    (default: new tensors; loader workers pass their ring buffers) in ``decoder.layout()``, and
    their keys. Each sample is copied in while its pixels are still in the cache, instead of a
    list of decoded samples being stacked afterwards."""
    empty = empty or _new_tensor
    out = {name: empty(name, (len(raw), *shape), dtype) for name, (shape, dtype) in decoder.layout().items()}
    views = [(name, t.numpy()) for name, t in out.items()]
    keys = []
    for i, s in enumerate(raw):
        d = decoder(s)
        for name, view in views:
            view[i] = d[name]
        keys.append(d["key"])
    return out, keys


def assemble(fields: dict[str, torch.Tensor], rest: dict) -> dict:
    """The batch a model consumes from stacked fields: images NHWC -> NCHW views, heatmaps
    (B, 1, h, w); ``rest`` (the keys) as it is."""
    batch = {"label": fields["label"], "key": rest["key"],
             **{name: fields[name] for name in TARGETS if name in fields}}
    for name in FIELDS:
        if name in fields:
            t = fields[name]
            batch[name] = t.permute(0, 3, 1, 2) if name in IMAGES else t[:, None] if name == "heatmap" else t
    return batch


FIELDS = ("image", "left", "right", "heatmap", "lmk")
TARGETS = ("target", "target_kind")
IMAGES = ("image", "left", "right")


def _new_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def to_device(batch: dict, device: torch.device, size: int | None = None) -> dict:
    """Move a collated batch to ``device``: pixel fields as decoded (uint8 0..255, so a flip or a
    copy moves a quarter of float's bytes), landmarks as float; when the batch travelled smaller
    than the model's side ``size``, scaled to it there (float pixels, :func:`resize_batch`). Keys
    stay on the host."""
    out = {"label": host_to(batch["label"], device)}
    for name in ("image", "left", "right", "heatmap"):
        if name in batch:
            out[name] = host_to(batch[name], device)
    if "lmk" in batch:
        out["lmk"] = host_to(batch["lmk"], device).float()
    for name in TARGETS:                   # drawn targets are new host tensors, not the loader's pinned ones
        if name in batch:
            out[name] = host_to(batch[name], device)
    if size is not None and out["image"].shape[-1] != size:
        out = resize_batch(out, size)
    return out


def resize_batch(batch: dict, size: int) -> dict:
    """A batch at another side scaled to side ``size`` (float pixels): bilinear with pixel-centre
    alignment (as the decoder's ``cv2.INTER_LINEAR``), antialiased when shrinking; halves to
    (size, size/2), heatmaps to size/4, landmarks scaled the same way."""
    side = batch["image"].shape[-1]
    out = dict(batch)
    for name, (h, w) in (("image", (size, size)), ("left", (size, size // 2)), ("right", (size, size // 2)),
                         ("heatmap", (size // 4, size // 4))):
        if name in batch:
            x = batch[name].float()
            out[name] = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                      antialias=h < x.shape[-2])
    if "lmk" in batch:
        out["lmk"] = (batch["lmk"] + 0.5) * (size / side) - 0.5
    return out


def pixel_affine(card: ModelCard, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1) float32: ``x * scale + shift`` = ``(x / 255 - mean) / std``;
    on the host unless ``device`` is given."""
    std = torch.tensor(card.std, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    mean = torch.tensor(card.mean, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    scale, shift = (1.0 / std).float(), (-mean / std).float()
    return (scale, shift) if device is None else (host_to(scale, device), host_to(shift, device))


def host_to(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor (a batch field, draws, matrices, constants) on ``device`` without holding up the
    host: a copy from pageable memory to a GPU first waits for everything queued on it, which would
    stop the host from queuing the next step while the GPU runs this one; from pinned memory (the
    loader's batches are pinned already; anything else is pinned first) it is queued behind that
    work instead."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        # pinned as a dense copy: pin_memory() keeps a view's strides (an expanded tensor fails, a
        # strided slice pins its whole span and its copy to the GPU goes through pageable memory)
        pinned = t if t.is_pinned() else copy_out(t, pin=True)
        return pinned.to(device, non_blocking=True)
    return t.to(device)


def normalise(batch: dict, card: ModelCard, channels_last: bool = False,
              affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Model input: images (x - mean) / std with the card's statistics, heatmap in [0, 1], as new
    tensors. A float image (scaled or warped on the device, an exported graph's input) takes one
    fused multiply-add (x * 1/std - mean/std); a uint8 image is converted once, into the memory
    format the model wants, and scaled in place (on a CPU, a second fresh float tensor costs more
    than the arithmetic). ``affine``: :func:`pixel_affine`'s pair made beforehand (an exported
    graph keeps it as buffers, which move with the graph; made here, a trace bakes in the device)."""
    scale, shift = affine if affine is not None else pixel_affine(card, batch["image"].device)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    out = dict(batch)
    for name in ("image", "left", "right"):
        if name in batch:
            x = batch[name]
            if x.is_floating_point():
                y = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
                out[name] = y.contiguous(memory_format=fmt) if channels_last else y
            else:
                y = torch.empty_like(x, dtype=torch.float32, memory_format=fmt).copy_(x)
                out[name] = y.mul_(scale).add_(shift)
    if "heatmap" in batch:
        out["heatmap"] = batch["heatmap"] / 255.0
    return out
