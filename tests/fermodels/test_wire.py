"""Batches travel at the stored crop side and reach the model's side on the device: the same
pixels (to a grey level), heatmaps and landmarks as resizing on the CPU, for every field."""
from __future__ import annotations

import pytest
import torch

from ferdata.io import read_header
from ferdata.tario import iter_tar_samples
from fermodels.data import SampleDecoder, open_split, resize_batch, stored_side, to_device, travel_side

CPU = torch.device("cpu")
ALL = ("image", "left", "right", "heatmap", "lmk")


def _raw(split, n: int = 4) -> list[dict]:
    out = []
    for url, _ in split.shards:
        out += [{"__key__": k, **f} for k, f in iter_tar_samples(url)]
        if len(out) >= n:
            return out[:n]
    return out


GPU = torch.device("cuda")                                     # a device object only: nothing runs on it


def test_batches_travel_at_the_stored_side_on_an_accelerator_and_resized_on_a_cpu(tiny_shards):
    split = open_split([tiny_shards], "train")
    stored = read_header(_raw(split, 1)[0]["jpg"]).width               # the tiny shards' crop side
    assert stored == 112 == stored_side(split)
    assert travel_side(224, stored, GPU) == 112 and travel_side(96, stored, GPU) == 96
    assert travel_side(224, stored, CPU) is None                      # the workers resize, in parallel


@pytest.mark.parametrize("size", [224, 160])
def test_device_upscale_matches_the_cpu_resize(tiny_shards, size):
    split = open_split([tiny_shards], "train")
    raw = _raw(split)
    on_cpu = to_device(SampleDecoder(ALL, size).collate(raw), CPU)
    wire = SampleDecoder(ALL, size, wire=travel_side(size, stored_side(split), GPU))
    travelled = wire.collate(raw)
    assert travelled["image"].shape[-1] == 112 and travelled["left"].shape[-2:] == (112, 56)
    on_device = to_device(travelled, CPU, size)
    for name in ("image", "left", "right", "heatmap"):
        assert on_device[name].shape == on_cpu[name].shape
        diff = (on_device[name] - on_cpu[name]).abs()
        assert diff.max() <= 1.5 and diff.mean() < 0.5, name        # cv2 rounds to uint8; the device does not
    torch.testing.assert_close(on_device["lmk"], on_cpu["lmk"], rtol=0, atol=1e-4)
    assert torch.equal(on_device["label"], on_cpu["label"])


def test_resize_batch_shrinks_with_antialiasing():
    """A 3x shrink of a one-pixel checkerboard is grey (plain bilinear would pick single pixels:
    0 or 255); landmarks keep the pixel-centre convention (centre 4 of 9 -> centre 1 of 3)."""
    board = (torch.arange(9)[:, None] + torch.arange(9)[None, :]) % 2 * 255.0
    batch = {"image": board.expand(1, 3, 9, 9).clone(), "lmk": torch.tensor([[[4.0, 4.0]]])}
    out = resize_batch(batch, 3)
    assert out["image"].shape == (1, 3, 3, 3) and ((out["image"] - 127.5).abs() < 5).all()
    torch.testing.assert_close(out["lmk"], torch.tensor([[[1.0, 1.0]]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh runs it there)")
@pytest.mark.parametrize("size", [112, 224])
def test_on_a_gpu_the_batch_arrives_as_on_the_cpu(tiny_shards, size):
    """The trainer's CUDA path (pinned copy, device-side scaling, augmentation and normalisation on
    the GPU) gives the CPU path's model input to float precision."""
    from fermodels.augment import AugmentParams, augment_batch
    from fermodels.data import normalise
    from fermodels.registry import create_model

    split = open_split([tiny_shards], "train")
    card = create_model("resnet18_112" if size == 112 else "resnet18").card
    wire = SampleDecoder(ALL, size, wire=travel_side(size, stored_side(split), GPU))
    batch = wire.collate(_raw(split))
    aug = AugmentParams(hflip=0.5, affine_p=0.0, degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0,
                        erase_p=0.0, erase_scale_min=0.02, erase_scale_max=0.15)
    fill = torch.tensor(card.mean) * 255.0
    out = {}
    for device in (CPU, GPU):
        gen = torch.Generator().manual_seed(3)               # the trainer's CPU generator (seed_step)
        moved = to_device(batch, device, size)
        out[device.type] = normalise(augment_batch(moved, aug, gen, fill.to(device)), card)
    for name in ("image", "left", "right", "heatmap", "lmk"):
        torch.testing.assert_close(out["cuda"][name].cpu(), out["cpu"][name], rtol=1e-4, atol=1e-3)
