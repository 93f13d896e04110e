"""Batches from shards: raw WebDataset samples -> uint8 batches holding exactly the fields a model declares.

:class:`SampleDecoder` turns one raw sample into uint8 arrays of the model's fields (at the side
batches travel at); :func:`decode_batch` decodes raw samples straight into a batch (every loader:
training stream, evaluation, inference) and :func:`assemble` lays the batch out as models consume
it. What a split holds is :mod:`fermodels.shardsplit`'s; moving a batch to the device and making it
model input, :mod:`fermodels.modelinput`'s. The loaders built on these live in :mod:`fermodels.stream`
(training) and :mod:`fermodels.indexed` (evaluation). Tar members are read with ferdata's safe
reader (no links, no ``..``, no pickles).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from ferdata.classes import CLASSES, stored_class_id
from ferdata.io import BadImage, Decoded, decode_jpeg_rgb, grey_copy
from ferdata.records import LABEL_MODE, SOFT_LABEL
from ferdata.tario import load_npy
from fermodels.losses import TARGET_KINDS
from fermodels.registry import FIELDS, ModelCard
from fermodels.shardsplit import Split, stored_side

MEMBERS = {"image": "jpg", "left": "left.jpg", "right": "right.jpg", "heatmap": "heatmap.png", "lmk": "lmk.npy"}
LANDMARKS = 68


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable map: raw sample (ext -> bytes) -> uint8 arrays for ``fields`` at the ``wire``
    side (default: the model's ``size``). Batches travel at ``wire`` and
    ``to_device(batch, device, size)`` scales them to the model's side on the device: with
    ``wire`` = the stored crop side (:func:`travel_side`), a 224 px model fed 112 px shards costs
    the workers no resize and the hand-off a quarter of the bytes. With ``targets`` it also reads
    each sample's label distribution (``json``: FERPlus votes in a training label mode) into
    ``target`` (one-hot of the label when it has none) and ``target_kind`` (how the loss uses it,
    :data:`fermodels.losses.TARGET_KINDS`). With ``grey`` the face and its halves are turned grey
    (BT.601 luma, :func:`ferdata.io.grey_copy`), as ``ferdata predict`` scores new faces for a grey-trained model."""

    fields: tuple[str, ...]
    size: int
    wire: int | None = None
    targets: bool = False
    stored: int | None = None      # the crop side the split records: a jpg of another is a damaged shard
    grey: bool = False

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
        img = _image(s, "jpg")
        src = img.shape[0]
        if img.shape[1] != src:                 # the landmarks scale with one side: a crop is square
            raise ValueError(f"sample {key!r}{_of(s.get('__url__', ''))}: its jpg is {img.shape[1]}x{src}, not a "
                             f"square crop: {DAMAGED}")
        if self.stored is not None and src != self.stored:      # its landmarks are in the recorded side's pixels
            raise ValueError(f"sample {key!r}{_of(s.get('__url__', ''))}: its jpg is {src}x{src}, but its split's "
                             f"_info.json records faces of align.size {self.stored}: {DAMAGED}")
        tone = _grey if self.grey else _as_is
        out = {"image": _resize(tone(img), side, side), "label": sample_label(s), "key": key}
        for name in ("left", "right"):
            if name in self.fields:
                out[name] = _resize(tone(_image(s, MEMBERS[name])), side, side // 2)
        if "heatmap" in self.fields:
            out["heatmap"] = _resize(_image(s, "heatmap.png"), side // 4, side // 4)
        if "lmk" in self.fields:
            lmk = load_npy(_member(s, "lmk.npy", key), f"sample {key!r}{_of(s.get('__url__', ''))}: its lmk.npy"
                           ).astype(np.float32)
            out["lmk"] = (lmk + 0.5) * (side / src) - 0.5          # pixel-centre convention
        if self.targets:
            out["target"], out["target_kind"] = label_target(_member(s, "json", key), out["label"], key,
                                                             s.get("__url__", ""))
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


def label_target(meta: bytes, label: int, key: str, url: str = "") -> tuple[np.ndarray, int]:
    """A sample's training target from its ``json`` member: (distribution over the canonical
    classes, kind) when it carries one in a training label mode, else (one-hot of ``label``, 0)."""
    try:
        record = json.loads(meta)
    except ValueError as e:                       # UnicodeDecodeError too
        raise ValueError(f"sample {key!r}{_of(url)}: its json member is not JSON ({e}): {DAMAGED}") from None
    if not isinstance(record, dict) or not isinstance(record.get("extra") or {}, dict):
        raise ValueError(f"sample {key!r}{_of(url)}: its json member holds no record with an 'extra' mapping: "
                         f"{DAMAGED}")
    extra = record.get("extra") or {}
    mode = extra.get(LABEL_MODE, "majority")
    if SOFT_LABEL not in extra or mode == "majority":
        target = np.zeros(len(CLASSES), np.float32)
        target[label] = 1.0
        return target, TARGET_KINDS["crossentropy"]          # one-hot: plain cross-entropy
    if mode not in TARGET_KINDS:
        raise ValueError(f"sample {key!r}{_of(url)}: label mode {mode!r} unknown; known: {', '.join(TARGET_KINDS)}")
    target = np.asarray(extra[SOFT_LABEL], np.float32)
    if target.shape != (len(CLASSES),) or not np.isfinite(target).all() or target.min() < 0 or target.sum() <= 0:
        raise ValueError(f"sample {key!r}{_of(url)}: {SOFT_LABEL} must be {len(CLASSES)} non-negative numbers with a "
                         f"positive sum, got {extra[SOFT_LABEL]!r}")
    return target, TARGET_KINDS[mode]


def split_decoder(card: ModelCard, split: Split, device: torch.device, grey: bool = False) -> SampleDecoder:
    """The decoder of a model's inputs read from ``split`` for a model on ``device`` (``grey``: faces
    turned grey)."""
    side = stored_side(split)                     # checked per face only where the split records it
    return SampleDecoder(card.fields, card.input_size, wire=travel_side(card.input_size, side, device),
                         stored=side if split.preprocess else None, grey=grey)


def travel_side(size: int, stored: int, device: torch.device) -> int | None:
    """The side batches for a ``size`` model on ``device`` travel at, from faces stored at
    ``stored``: on an accelerator the stored side (shrinking stays in the workers, where it cuts
    the hand-off), scaled to ``size`` there; on the CPU None: the workers resize, in parallel,
    what the main process would otherwise resize alone."""
    return min(stored, size) if device.type != "cpu" else None


def sample_label(s: dict) -> int:
    """The class id of a raw sample (its ``cls`` member)."""
    return class_id(_member(s, "cls", s["__key__"]), s["__key__"], s.get("__url__", ""))


def class_id(text: bytes, key: str, url: str) -> int:
    """A ``cls`` member's class id; anything but a canonical class id is a damaged shard (named)."""
    value = stored_class_id(text)
    if value is None:
        raise ValueError(f"sample {key!r}{_of(url)} has cls {text[:20]!r}, not a class id 0-{len(CLASSES) - 1}: "
                         f"{DAMAGED}")
    return value


DAMAGED = "its shard is damaged (`ferdata verify` checks the split; re-run the shard stage or `dvc pull` it)"


def _of(url: str) -> str:
    return f" of {url}" if url else ""


def _member(s: dict, ext: str, key: str) -> bytes:
    if ext not in s:
        raise ValueError(f"sample {key!r}{_of(s.get('__url__', ''))} has no {ext!r} but the model needs it; " + (
            f"every sample has one: {DAMAGED}" if ext in ("jpg", "cls")
            else "re-run derive/shard, or prepare the dataset with a backend that gives 68 landmarks"))
    return s[ext]


def _image(s: dict, ext: str) -> np.ndarray:
    """Member ``ext`` of raw sample ``s`` decoded; one that does not decode names the sample and shard."""
    key = s["__key__"]
    try:
        return decode_jpeg_rgb(_member(s, ext, key))
    except BadImage as e:
        raise ValueError(f"sample {key!r}{_of(s.get('__url__', ''))}: its {ext} does not decode ({e}): "
                         f"{DAMAGED}") from None


def _as_is(img: np.ndarray) -> np.ndarray:
    return img


def _grey(img: np.ndarray) -> np.ndarray:
    return grey_copy(Decoded(img, 1.0, ())).rgb


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
            value = d[name]
            if isinstance(value, np.ndarray) and (value.shape != view.shape[1:] or value.dtype != view.dtype):
                _refuse_field(s, name, value, view)
            view[i] = value
        keys.append(d["key"])
    return out, keys


def _refuse_field(s: dict, name: str, value: np.ndarray, view: np.ndarray) -> None:
    """A decoded member the batch cannot hold (a grey or 16-bit picture, 5 landmarks): numpy would
    have cast it modulo 256, broadcast it, or failed with no sample named."""
    raise ValueError(f"sample {s['__key__']!r}{_of(s.get('__url__', ''))}: its {MEMBERS.get(name, 'json')} gives "
                     f"{value.dtype} {tuple(value.shape)} where the batch takes {view.dtype} {tuple(view.shape[1:])}: "
                     f"{DAMAGED}")


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


TARGETS = ("target", "target_kind")
IMAGES = ("image", "left", "right")


def _new_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)
