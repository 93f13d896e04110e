"""Shard loader: WebDataset pipeline over our tars -> uint8 batches for a model's fields.

Workers only decode and resize (uint8); normalisation and float conversion happen
on the training device (see :func:`to_device`), so the loader can feed a GPU.
Tar members are read with ferdata's safe reader (no links, no ``..``, no pickle).
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from ferdata.geometry import flip_landmarks
from ferdata.io import decode_jpeg_rgb
from ferdata.stages.shard import INFO, hash_unit
from ferdata.tario import iter_tar_samples
from fermodels.registry import ModelCard


def shard_urls(shard_dir: str | Path, split: str) -> tuple[list[str], dict]:
    """Shard paths of one split and its ``_info.json``."""
    d = Path(shard_dir) / split
    info_path = d / INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: run the shard stage (dvc repro) or `ferdata prepare` first")
    info = json.loads(info_path.read_text())
    return [str(d / s["name"]) for s in info["shards"]], info


def tar_samples(src: Iterator[dict]) -> Iterator[dict]:
    """webdataset stage: {"url": path} -> {"__key__", ext: bytes...} via the safe reader."""
    for item in src:
        for key, fields in iter_tar_samples(item["url"]):
            yield {"__key__": key, **fields}


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable map: raw sample -> dict of uint8/float numpy arrays for ``fields``."""

    fields: tuple[str, ...]
    size: int
    train: bool
    seed: int = 0
    hflip: float = 0.5

    def __call__(self, s: dict) -> dict:
        S = self.size
        img = decode_jpeg_rgb(s["jpg"])
        src = img.shape[0]
        out = {"image": cv2.resize(img, (S, S), interpolation=cv2.INTER_LINEAR) if src != S else img,
               "label": int(s["cls"]), "key": s["__key__"]}
        if "left" in self.fields or "right" in self.fields:
            for name in ("left", "right"):
                half = decode_jpeg_rgb(s[f"{name}.jpg"])
                out[name] = cv2.resize(half, (S // 2, S), interpolation=cv2.INTER_LINEAR)
        if "heatmap" in self.fields:
            hm = decode_jpeg_rgb(s["heatmap.png"])
            out["heatmap"] = cv2.resize(hm, (S // 4, S // 4), interpolation=cv2.INTER_LINEAR)
        if "lmk" in self.fields:
            if "lmk.npy" not in s:
                raise ValueError(f"sample {s['__key__']} has no lmk.npy but the model needs landmarks")
            lmk = np.load(io.BytesIO(s["lmk.npy"]), allow_pickle=False).astype(np.float32)
            out["lmk"] = (lmk + 0.5) * (S / src) - 0.5
        if self.train and _unit(self.seed, out["key"]) < self.hflip:
            out = hflip_sample(out)
        return out


def _unit(seed: int, key: str) -> float:
    """Deterministic per-(epoch seed, sample) coin, independent of worker scheduling."""
    return hash_unit(seed, key)


def hflip_sample(s: dict) -> dict:
    """Mirror a decoded sample: the image flips, halves swap (already mirrored), landmarks permute."""
    s = dict(s)
    s["image"] = np.ascontiguousarray(s["image"][:, ::-1])
    if "left" in s:
        s["left"], s["right"] = s["right"], s["left"]
    if "heatmap" in s:
        s["heatmap"] = np.ascontiguousarray(s["heatmap"][:, ::-1])
    if "lmk" in s:
        s["lmk"] = flip_landmarks(s["lmk"], s["image"].shape[1])
    return s


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples into uint8 NCHW tensors (images) and float tensors (lmk)."""
    batch: dict = {"label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
                   "key": [s["key"] for s in samples]}
    for name in ("image", "left", "right"):
        if name in samples[0]:
            batch[name] = torch.from_numpy(np.stack([s[name] for s in samples])).permute(0, 3, 1, 2)
    if "heatmap" in samples[0]:
        batch["heatmap"] = torch.from_numpy(np.stack([s["heatmap"] for s in samples]))[:, None]
    if "lmk" in samples[0]:
        batch["lmk"] = torch.from_numpy(np.stack([s["lmk"] for s in samples]))
    return batch


def to_device(batch: dict, card: ModelCard, device: torch.device,
              channels_last: bool = False) -> dict:
    """Move a uint8 batch to ``device`` and normalise there (cheap on GPU, off the loader)."""
    mean = torch.tensor(card.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(card.std, device=device).view(1, 3, 1, 1) * 255.0
    out = {"label": batch["label"].to(device, non_blocking=True)}
    for name in ("image", "left", "right"):
        if name in batch:
            x = (batch[name].to(device, non_blocking=True).float() - mean) / std
            out[name] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if "heatmap" in batch:
        out["heatmap"] = batch["heatmap"].to(device, non_blocking=True).float() / 255.0
    if "lmk" in batch:
        out["lmk"] = batch["lmk"].to(device, non_blocking=True)
    return out


def make_loader(shard_dir: str | Path, split: str, card: ModelCard, *, batch_size: int, workers: int,
                train: bool, seed: int, epoch: int, shuffle_buffer: int):
    """A WebLoader yielding uint8 batches for one epoch.

    Training shuffles the shard order and samples with a generator seeded by
    (seed, epoch), so an epoch is reproducible and a resumed run sees the same data.
    """
    import webdataset as wds

    urls, info = shard_urls(shard_dir, split)
    if not urls:
        raise ValueError(f"split {split!r} in {shard_dir} has no samples")
    if train:
        random.Random(seed * 100003 + epoch).shuffle(urls)
    stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker, tar_samples]
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=seed * 100003 + epoch))
    stages += [wds.map(SampleDecoder(card.fields, card.input_size, train, seed * 100003 + epoch)),
               wds.batched(batch_size, collation_fn=collate, partial=not train)]
    loader = wds.WebLoader(wds.DataPipeline(*stages), batch_size=None, num_workers=min(workers, len(urls)),
                           pin_memory=torch.cuda.is_available())
    return loader, info
