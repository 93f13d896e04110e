"""Shard loaders: WebDataset tars -> uint8 batches holding exactly the fields a model declares.

* Training streams the shards (sequential reads) along the epoch plan of
  :mod:`fermodels.distributed` (exact per-rank/per-worker split), optionally resampled for class
  balance (:mod:`fermodels.sampling`), through a seeded shuffle buffer.
* Evaluation reads samples by tar offset (:class:`IndexedSplit`), so any order can be asked
  for: file order, shuffled, class-sorted (the batch-composition check) or one rank's share.

Workers only decode and resize (uint8); floats, augmentation and normalisation happen on the
training device (:func:`to_device`, :mod:`fermodels.augment`, :func:`normalise`). Tar members
are read with ferdata's safe reader (no links, no ``..``, no pickles).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ferdata.classes import CLASSES
from ferdata.io import decode_jpeg_rgb, read_header
from ferdata.stages.shard import INFO, index_chunks
from ferdata.tario import iter_tar_samples, load_npy
from fermodels.batchring import BatchRing, received
from fermodels.distributed import WorkerPlan
from fermodels.registry import ModelCard
from fermodels.sampling import ClassRepeat, repeat_stream

MEMBERS = {"image": "jpg", "left": "left.jpg", "right": "right.jpg", "heatmap": "heatmap.png", "lmk": "lmk.npy"}
PREFETCH = 4
LANDMARKS = 68
RING_DEPTH = PREFETCH + 2         # shared buffers per worker (fermodels.batchring)


@dataclass(frozen=True)
class Split:
    """One split of one or more prepared datasets, as their ``_info.json`` files describe it."""

    name: str
    dirs: tuple[str, ...]
    shards: tuple[tuple[str, int], ...]          # (tar path, sample count)
    histogram: dict[str, int]                   # canonical class name -> count
    hashes: dict[str, list[str]]                # shard dir -> sha256 of each shard

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)

    def class_counts(self, num_classes: int) -> list[int]:
        return [self.histogram.get(c, 0) for c in CLASSES[:num_classes]]

    def classes_beyond(self, num_classes: int) -> dict[str, int]:
        """Samples whose class a ``num_classes`` model cannot predict (e.g. Contempt for 7)."""
        return {c: n for c, n in self.histogram.items() if n and CLASSES.index(c) >= num_classes}


def open_split(shard_dirs: Sequence[str | Path], split: str) -> Split:
    """Read ``<dir>/<split>/_info.json`` of every shard dir (one per training dataset)."""
    shards, hist, hashes = [], Counter(), {}
    for d in shard_dirs:
        info_path = Path(d) / split / INFO
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: prepare the dataset first "
                                    f"(`dvc repro shard@<name>` or `ferdata prepare <name>`)")
        info = json.loads(info_path.read_text())
        shards += [(str(info_path.parent / s["name"]), int(s["count"])) for s in info["shards"]]
        hist.update(info["class_histogram"])
        hashes[str(d)] = [s["sha256"] for s in info["shards"]]
    return Split(split, tuple(str(d) for d in shard_dirs), tuple(shards), dict(hist), hashes)


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable map: raw sample (ext -> bytes) -> uint8 arrays for ``fields`` at the ``wire``
    side (default: the model's ``size``). Batches travel at ``wire`` and
    ``to_device(batch, device, size)`` scales them to the model's side on the device: with
    ``wire`` = the stored crop side (:func:`travel_side`), a 224 px model fed 112 px shards costs
    the workers no resize and the hand-off a quarter of the bytes."""

    fields: tuple[str, ...]
    size: int
    wire: int | None = None

    @property
    def side(self) -> int:
        """The side of the images this decoder makes."""
        return self.wire or self.size

    def __call__(self, s: dict) -> dict:
        key, side = s["__key__"], self.side
        img = decode_jpeg_rgb(s["jpg"])
        src = img.shape[0]
        out = {"image": _resize(img, side, side), "label": int(s["cls"]), "key": key}
        for name in ("left", "right"):
            if name in self.fields:
                out[name] = _resize(decode_jpeg_rgb(_member(s, MEMBERS[name], key)), side, side // 2)
        if "heatmap" in self.fields:
            out["heatmap"] = _resize(decode_jpeg_rgb(_member(s, "heatmap.png", key)), side // 4, side // 4)
        if "lmk" in self.fields:
            lmk = load_npy(_member(s, "lmk.npy", key), f"{key}.lmk.npy").astype(np.float32)
            out["lmk"] = (lmk + 0.5) * (side / src) - 0.5          # pixel-centre convention
        return out

    def layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-sample shape and dtype of each field :func:`stack_fields` makes of this decoder's
        samples (the loader's shared buffers are made from it)."""
        side = self.side
        shapes = {"image": (side, side, 3), "left": (side, side // 2, 3), "right": (side, side // 2, 3),
                  "heatmap": (side // 4, side // 4), "lmk": (LANDMARKS, 2)}
        return {"label": ((), torch.int64),
                **{f: (shapes[f], torch.float32 if f == "lmk" else torch.uint8)
                   for f in FIELDS if f == "image" or f in self.fields}}


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
    """The crop side of ``split``'s faces, read from the first face of each dataset's first shard
    (the smallest, when datasets differ)."""
    firsts = {}
    for path, _ in split.shards:
        firsts.setdefault(str(Path(path).parent), path)
    sides = []
    for path in firsts.values():
        _, fields = next(iter_tar_samples(path), (None, {}))
        if "jpg" in fields:
            head = read_header(fields["jpg"])
            sides.append(min(head.width, head.height))
    if not sides:
        raise ValueError(f"no face image in the first shard of {', '.join(firsts) or split.name}")
    return min(sides)


def _member(s: dict, ext: str, key: str) -> bytes:
    if ext not in s:
        raise ValueError(f"sample {key!r} has no {ext!r} but the model needs it; re-run derive/shard, "
                         "or prepare the dataset with a backend that gives 68 landmarks")
    return s[ext]


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples: uint8 NCHW images, (B, 1, h, w) heatmaps, float landmarks."""
    return assemble(stack_fields(samples), {"key": [s["key"] for s in samples]})


def stack_fields(samples: list[dict], empty: Callable[..., torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Each tensor field of ``samples`` stacked into ``empty(name, shape, dtype)`` (default: a new
    tensor; loader workers pass their shared ring buffers, :mod:`fermodels.batchring`)."""
    empty = empty or _new_tensor
    n, first = len(samples), samples[0]
    label = empty("label", (n,), torch.int64)
    label.numpy()[:] = [s["label"] for s in samples]
    out = {"label": label}
    for name in FIELDS:
        if name in first:
            arr = first[name]
            out[name] = empty(name, (n, *arr.shape), _TORCH_DTYPES[arr.dtype])
            np.stack([s[name] for s in samples], out=out[name].numpy())
    return out


def assemble(fields: dict[str, torch.Tensor], rest: dict) -> dict:
    """The batch a model consumes from stacked fields: images NHWC -> NCHW views, heatmaps
    (B, 1, h, w); ``rest`` (the keys) as it is."""
    batch = {"label": fields["label"], "key": rest["key"]}
    for name in FIELDS:
        if name in fields:
            t = fields[name]
            batch[name] = t.permute(0, 3, 1, 2) if name in IMAGES else t[:, None] if name == "heatmap" else t
    return batch


FIELDS = ("image", "left", "right", "heatmap", "lmk")
IMAGES = ("image", "left", "right")
_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}


def _new_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def to_device(batch: dict, device: torch.device, size: int | None = None) -> dict:
    """Move a collated batch to ``device`` as float pixel values (0..255), scaled to the model's
    side ``size`` there when it travelled smaller (:func:`resize_batch`); keys stay on the host."""
    out = {"label": batch["label"].to(device, non_blocking=True)}
    for name in ("image", "left", "right", "heatmap", "lmk"):
        if name in batch:
            out[name] = batch[name].to(device, non_blocking=True).float()
    if size is not None and out["image"].shape[-1] != size:
        out = resize_batch(out, size)
    return out


def resize_batch(batch: dict, size: int) -> dict:
    """A float batch at another side scaled to side ``size``: bilinear with pixel-centre alignment
    (as the decoder's ``cv2.INTER_LINEAR``), antialiased when shrinking; halves to (size, size/2),
    heatmaps to size/4, landmarks scaled the same way."""
    side = batch["image"].shape[-1]
    out = dict(batch)
    for name, (h, w) in (("image", (size, size)), ("left", (size, size // 2)), ("right", (size, size // 2)),
                         ("heatmap", (size // 4, size // 4))):
        if name in batch:
            x = batch[name]
            out[name] = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                      antialias=h < x.shape[-2])
    if "lmk" in batch:
        out["lmk"] = (batch["lmk"] + 0.5) * (size / side) - 0.5
    return out


def normalise(batch: dict, card: ModelCard, channels_last: bool = False) -> dict:
    """Model input: images (x - mean) / std with the card's statistics, heatmap in [0, 1]. One
    fused multiply-add per image (x * 1/std - mean/std): one pass, one new tensor."""
    dev = batch["image"].device
    std = torch.tensor(card.std, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    mean = torch.tensor(card.mean, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    scale, shift = (1.0 / std).to(dev, torch.float32), (-mean / std).to(dev, torch.float32)
    out = dict(batch)
    for name in ("image", "left", "right"):
        if name in batch:
            x = torch.addcmul(shift.to(batch[name].dtype), batch[name], scale.to(batch[name].dtype))
            out[name] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if "heatmap" in batch:
        out["heatmap"] = batch["heatmap"] / 255.0
    return out


# ---- training stream -----------------------------------------------------------------------

def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def read_pieces(pieces: Sequence) -> Iterator[dict]:
    """Raw samples of each piece, in file order (reads, never decodes)."""
    for piece in pieces:
        for i, (key, fields) in enumerate(iter_tar_samples(piece.url)):
            if i >= piece.stop:
                break
            if i >= piece.start:
                yield {"__key__": key, **fields}


def shuffled(samples: Iterable[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Seeded shuffle buffer (reservoir swap), as ``wds.shuffle`` but reproducible."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(bufsize)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


class EpochStream(IterableDataset):
    """One rank's epoch: worker ``w`` reads ``plans[w]`` and yields its planned batches (into
    ``ring``'s shared buffers when it runs in a worker process)."""

    def __init__(self, plans: Sequence[WorkerPlan], decoder: SampleDecoder, shuffle_buffer: int,
                 seed: int, repeat: ClassRepeat | None, ring: BatchRing | None = None) -> None:
        self.plans, self.decoder = list(plans), decoder
        self.shuffle_buffer, self.seed, self.repeat, self.ring = shuffle_buffer, seed, repeat, ring

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        ring = self.ring if info is not None else None
        plan = self.plans[wid]
        if self.repeat is None:
            source: Iterable[dict] = read_pieces(plan.pieces)
        else:
            source = repeat_stream(lambda: read_pieces(plan.pieces), self.repeat, plan.num_samples,
                                   lambda s: int(s["cls"]))
        if self.shuffle_buffer > 1:
            source = shuffled(source, self.shuffle_buffer, random.Random(mix_seed(self.seed, plan.worker)))
        samples = iter(source)
        _take(samples, sum(plan.batch_sizes[: plan.skip_batches]))        # done before the resume
        for serial, size in enumerate(plan.batch_sizes[plan.skip_batches:]):
            decoded = [self.decoder(s) for s in _take(samples, size)]
            if ring is None:
                yield collate(decoded)
            else:
                stack_fields(decoded, ring.acquire(wid, serial))
                yield BatchRing.message(wid, serial, size, {"key": [s["key"] for s in decoded]})


def _take(it: Iterator[dict], n: int) -> list[dict]:
    """Exactly ``n`` items of ``it``; fewer means the shards disagree with their ``_info.json``."""
    out = list(itertools.islice(it, n))
    if len(out) != n:
        raise RuntimeError(f"shards ended early: {len(out)} of {n} samples; their _info.json counts are "
                           "wrong (run `ferdata verify`)")
    return out


class StreamLoader:
    """One rank's epoch as batches the caller owns: a DataLoader over an :class:`EpochStream`
    (batches are built inside the workers, handed over through a :class:`BatchRing`)."""

    def __init__(self, plans: Sequence[WorkerPlan], decoder: SampleDecoder, *, workers: int, shuffle_buffer: int,
                 seed: int, repeat: ClassRepeat | None) -> None:
        self.plans, self.decoder, self.workers = list(plans), decoder, workers
        self.shuffle_buffer, self.seed, self.repeat = shuffle_buffer, seed, repeat
        self.pin_memory = torch.cuda.is_available()

    def __iter__(self) -> Iterator[dict]:
        n = len(self.plans) if self.workers > 0 else 0
        ring = None
        if n:
            capacity = max((max(p.batch_sizes, default=0) for p in self.plans), default=0)
            ring = BatchRing(self.decoder.layout(), n, RING_DEPTH, max(capacity, 1))
        dataset = EpochStream(self.plans, self.decoder, self.shuffle_buffer, self.seed, self.repeat, ring)
        loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=n,
                            pin_memory=self.pin_memory and not n, prefetch_factor=PREFETCH if n else None)
        return iter(loader) if ring is None else received(iter(loader), ring, self.pin_memory, assemble)


def _as_is(batch: dict) -> dict:
    """Batches leave the workers as they are built (DataLoader's default walks every key)."""
    return batch


def stream_loader(plans: Sequence[WorkerPlan], decoder: SampleDecoder, *, workers: int, shuffle_buffer: int,
                  seed: int, repeat: ClassRepeat | None) -> StreamLoader:
    """The loader of one rank's epoch (see :class:`StreamLoader`)."""
    return StreamLoader(plans, decoder, workers=workers, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat)


# ---- random access for evaluation ----------------------------------------------------------

class IndexedSplit(Dataset):
    """Samples of one split of one or more shard dirs, read by tar offset (``os.pread``)."""

    def __init__(self, shard_dirs: Sequence[str | Path], split: str, decoder: SampleDecoder,
                 num_classes: int) -> None:
        self.decoder, self.num_classes = decoder, num_classes
        exts = {"cls"} | {MEMBERS[f] for f in decoder.fields}
        self.keys: list[str] = []
        self.members: list[dict[str, tuple[str, int, int]]] = []
        self.dataset_index: list[int] = []
        self.excluded: Counter = Counter()
        for d, shard_dir in enumerate(shard_dirs):
            directory = Path(shard_dir) / split
            if not (directory / INFO).is_file():
                raise FileNotFoundError(f"{directory / INFO} not found: prepare the dataset first")
            for key, fields in index_chunks(directory, split).items():
                label = int(read_member(fields["cls"]))
                if label >= num_classes:
                    self.excluded[CLASSES[label]] += 1
                    continue
                self.keys.append(key)
                self.members.append({e: m for e, m in fields.items() if e in exts})
                self.dataset_index.append(d)
        self.labels = np.array([int(read_member(m["cls"])) for m in self.members], np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        raw = {"__key__": self.keys[i], **{e: read_member(m) for e, m in self.members[i].items()}}
        return self.decoder(raw)


_FDS: dict[tuple[int, str], int] = {}


def read_member(member: tuple[str, int, int]) -> bytes:
    """Read one tar member by offset; descriptors are cached per process (fork-safe)."""
    path, offset, size = member
    fd = _FDS.get((os.getpid(), path))
    if fd is None:
        fd = _FDS[(os.getpid(), path)] = os.open(path, os.O_RDONLY)
    return os.pread(fd, size, offset)


def indexed_loader(dataset: IndexedSplit, order: Sequence[int], batch_size: int, workers: int) -> DataLoader:
    """Batches of ``dataset`` in exactly ``order`` (a list of indices)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(order), num_workers=workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available())
