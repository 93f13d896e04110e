"""From a uint8 batch to model input on the training device: :func:`to_device` moves a batch
(pixels stay uint8 unless scaled there to the model's side, :func:`resize_batch`), and
:func:`normalise` makes it float input with the model card's statistics (:func:`pixel_affine`).
:func:`host_to` copies any host tensor to a GPU without holding up the host."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fermodels.batchring import copy_out
from fermodels.data import TARGETS
from fermodels.registry import ModelCard


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


def _scale_channels_(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``y * scale + shift`` in place for a float (N, C, H, W) ``y`` dense in either memory format and
    (1, C, 1, 1) factors, along rows of pixels (NCHW: one row per channel; NHWC: the factors repeated
    along a row of pixels). Broadcast over an NHWC image as it is, a CPU multiplies element by
    element: 3.3x slower for a uint8 batch of 64 at 112 px made channels_last."""
    n, c, h, w = y.shape
    if y.is_contiguous():
        rows, scale, shift = y.view(n, c, h * w), scale.view(1, c, 1), shift.view(1, c, 1)
    else:                                       # channels_last, as normalise makes it
        rows, scale, shift = y.permute(0, 2, 3, 1).view(n * h, w * c), scale.view(c).repeat(w), shift.view(c).repeat(w)
    rows.mul_(scale).add_(shift)
    return y


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
    than the arithmetic) along rows of pixels (:func:`_scale_channels_`). ``affine``:
    :func:`pixel_affine`'s pair made beforehand (an exported graph keeps it as buffers, which move
    with the graph; made here, a trace bakes in the device).
    ``channels_last`` false gives NCHW images whatever the input's layout (the loader's are NHWC in
    memory: kept, they ran every convolution channels_last whatever ``train.channels_last`` said)."""
    scale, shift = affine if affine is not None else pixel_affine(card, batch["image"].device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = dict(batch)
    for name in ("image", "left", "right"):
        if name in batch:
            x = batch[name]
            if x.is_floating_point():
                y = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
                out[name] = y.contiguous(memory_format=fmt)
            else:
                y = torch.empty_like(x, dtype=torch.float32, memory_format=fmt).copy_(x)
                out[name] = _scale_channels_(y, scale, shift)
    if "heatmap" in batch:
        out["heatmap"] = batch["heatmap"] / 255.0
    return out
