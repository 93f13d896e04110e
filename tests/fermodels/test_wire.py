"""Batches travel at the stored crop side and reach the model's side on the device: the same
pixels (to a grey level), heatmaps and landmarks as resizing on the CPU, for every field."""
from __future__ import annotations

import pytest
import torch

from ferdata.io import read_header
from ferdata.tario import iter_tar_samples
from fermodels.data import SampleDecoder, travel_side
from fermodels.modelinput import resize_batch, to_device
from fermodels.shardsplit import open_split, stored_side

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


def test_the_workers_shrink_by_averaging_as_the_device_does():
    """The loader's own resize (every shrink happens there: a heatmap stored finer than a quarter
    of the side, a crop stored larger than the model) was plain bilinear: a 4x shrink of stripes
    0, 255, 255, 0 read only the middle two pixels (255), where the device's antialiased resize,
    and the picture, give their mean."""
    import cv2
    import numpy as np

    from ferdata.io import encode_jpeg

    stripes = np.tile(np.array([0, 255, 255, 0], np.uint8), (112, 28))                  # 112 x 112 cells
    ok, png = cv2.imencode(".png", stripes)
    raw = {"__key__": "k", "cls": b"0", "jpg": encode_jpeg(np.zeros((112, 112, 3), np.uint8), 95),
           "heatmap.png": png.tobytes()}
    heat = SampleDecoder(("image", "heatmap"), 112)(raw)["heatmap"]
    assert heat.shape == (28, 28) and np.abs(heat.astype(float) - 127.5).max() <= 1
    device = resize_batch({"image": torch.zeros(1, 3, 112, 112),
                           "heatmap": torch.from_numpy(stripes).float()[None, None]}, 112)["heatmap"]
    assert (device[..., 1:-1] - 127.5).abs().max() <= 1                    # its border columns weigh edges


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (bench/gpu_check.sh runs it there)")


def _augment(every: bool):
    from fermodels.augment import AugmentParams

    if every:                                  # flips, warps and erasing on every sample that draws them
        return AugmentParams(hflip=0.5, affine_p=1.0, degrees=10.0, translate=0.05, scale_min=0.9, scale_max=1.1,
                             erase_p=1.0, erase_scale_min=0.02, erase_scale_max=0.15)
    return AugmentParams(hflip=0.5, affine_p=0.0, degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0,
                         erase_p=0.0, erase_scale_min=0.02, erase_scale_max=0.15)


@NEEDS_CUDA
@pytest.mark.parametrize("every", [False, True], ids=["flip", "every-augmentation"])
@pytest.mark.parametrize("size", [112, 224])
def test_on_a_gpu_the_batch_arrives_as_on_the_cpu(tiny_shards, size, every):
    """The trainer's CUDA path (pinned copy, device-side scaling, augmentation and normalisation on
    the GPU) gives the CPU path's model input to float precision: the same draws, the same warps
    (bilinear resampling in float32 on both) and the same erased rectangles."""
    from fermodels.augment import augment_batch
    from fermodels.modelinput import normalise
    from fermodels.registry import create_model

    split = open_split([tiny_shards], "train")
    card = create_model("resnet18_112" if size == 112 else "resnet18").card
    wire = SampleDecoder(ALL, size, wire=travel_side(size, stored_side(split), GPU))
    batch = wire.collate(_raw(split))
    fill = torch.tensor(card.mean) * 255.0
    out = {}
    for device in (CPU, GPU):
        gen = torch.Generator().manual_seed(3)               # the trainer's CPU generator (seed_step)
        moved = to_device(batch, device, size)
        out[device.type] = normalise(augment_batch(moved, _augment(every), gen, fill), card)
    for name in ("image", "left", "right", "heatmap", "lmk"):
        tol = 1e-3 if name == "lmk" or not every else 1e-2        # 1e-2 of a normalised pixel: < 1 grey level
        torch.testing.assert_close(out["cuda"][name].cpu(), out["cpu"][name], rtol=1e-4, atol=tol)


@NEEDS_CUDA
def test_the_host_never_waits_for_the_gpu_in_the_input_path(tiny_shards):
    """From the loader's pinned batch to the model's input (copy, scaling, every augmentation,
    normalisation), nothing makes the host wait for the GPU: a copy from pageable memory, a value
    read back or a device-side ``nonzero`` would each stop it from queuing the next step while the
    GPU runs this one. torch's sync debug mode turns each such wait into an error."""
    from fermodels.augment import augment_batch
    from fermodels.modelinput import normalise
    from fermodels.registry import create_model

    split = open_split([tiny_shards], "train")
    card = create_model("cmnet").card                          # 224 px, image and halves: every field scales
    wire = SampleDecoder(ALL, card.input_size, wire=travel_side(card.input_size, stored_side(split), GPU))
    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in wire.collate(_raw(split)).items()}
    fill = torch.tensor(card.mean) * 255.0
    real_to, pageable = torch.Tensor.to, []

    def to(self, *args, **kwargs):               # the sync debug mode does not flag a non_blocking pageable copy
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda" and not self.is_pinned():
            pageable.append(tuple(self.shape))
        return out

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.Tensor, "to", to)
            x = normalise(augment_batch(to_device(batch, GPU, card.input_size), _augment(True),
                                        torch.Generator().manual_seed(0), fill), card, True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x["image"].is_cuda and torch.isfinite(x["image"]).all()
    assert pageable == [], f"copies to the GPU from pageable memory: {pageable}"


@NEEDS_CUDA
def test_host_to_pins_what_it_copies_densely():
    """An already pinned tensor is copied as it is; an expanded tensor (pin_memory() keeps its zero
    strides and fails) and a strided slice (pinned whole, copied through pageable memory) arrive
    as their values."""
    from fermodels.modelinput import host_to

    pinned = torch.arange(6).pin_memory()
    expanded = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(4, 3, 5, 5)
    strided = torch.arange(4000).reshape(40, 100)[:, ::50]
    for t in (pinned, expanded, strided):
        torch.testing.assert_close(host_to(t, GPU).cpu(), t)
    assert host_to(torch.ones(2), "cuda").is_cuda


def test_augmentation_does_only_per_sample_work_on_the_host():
    """On an accelerator the host draws each sample's flip, warp and erasing (a few numbers per
    sample, the same draws as on the CPU) and the device does every per-pixel step: a host-side
    mask of the whole batch cost 13-143 ms a step at batch 512 before the GPU could go on. The
    meta device stands in for the accelerator: its tensors have shapes but no data, so every
    per-pixel tensor made on the CPU shows, and every output must stay on the device."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from fermodels.augment import AugmentParams, augment_batch

    class LargestHostTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    self.largest = max(self.largest, t.numel())
            return out

    n, s, meta = 8, 112, torch.device("meta")
    shapes = {"image": (3, s, s), "left": (3, s, s // 2), "right": (3, s, s // 2), "heatmap": (1, s // 4, s // 4)}
    batch = {k: torch.empty(n, *shape, dtype=torch.uint8, device=meta) for k, shape in shapes.items()}
    batch |= {"lmk": torch.empty(n, 68, 2, device=meta), "label": torch.empty(n, dtype=torch.int64, device=meta)}
    every = AugmentParams(hflip=0.5, affine_p=1.0, degrees=10.0, translate=0.05, scale_min=0.9, scale_max=1.1,
                          erase_p=1.0, erase_scale_min=0.02, erase_scale_max=0.15)
    with LargestHostTensor() as host:
        out = augment_batch(batch, every, torch.Generator().manual_seed(0), torch.tensor([1.0, 2.0, 3.0]))
    assert {k: (v.device, tuple(v.shape)) for k, v in out.items()} == {k: (meta, tuple(v.shape)) for k, v in
                                                                         batch.items()}
    # per sample: erasing's 10 tries x (area, aspect) are the most; a per-pixel tensor holds 112 x 112
    assert 0 < host.largest <= 32 * n, f"a host tensor of {host.largest} values: per-pixel work on the CPU"


def test_every_host_tensor_reaches_the_device_through_host_to(monkeypatch):
    """The input path (to_device, every augmentation, normalise) moves host tensors to the device
    only through ``host_to``, which pins them so that the copy queues behind the GPU's work instead
    of waiting for it (the sync debug test checks the effect on a GPU). On the meta device, any op
    outside ``host_to`` that reads a host tensor and makes a device one is a stray transfer."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    import fermodels.augment as augment
    import fermodels.modelinput as modelinput
    from fermodels.registry import create_model

    inside, real = [], modelinput.host_to

    def tracked(t, device):
        inside.append(True)
        try:
            return real(t, device)
        finally:
            inside.pop()

    for module in (modelinput, augment):
        monkeypatch.setattr(module, "host_to", tracked)

    class StrayTransfers(TorchDispatchMode):
        found: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            reads_host = any(isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.dim() > 0
                             for a in tree_flatten((args, kwargs))[0])
            makes_device = any(isinstance(o, torch.Tensor) and o.device.type == "meta" for o in tree_flatten(out)[0])
            if reads_host and makes_device and not inside:
                self.found.append(str(func))
            return out

    card = create_model("cmnet").card                              # image and halves at 224 px
    s, n = 112, 4                                                  # travelling at 112: scaled on the device
    g = torch.Generator().manual_seed(0)
    host = {"image": torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g),
            "left": torch.randint(0, 256, (n, 3, s, s // 2), dtype=torch.uint8, generator=g),
            "right": torch.randint(0, 256, (n, 3, s, s // 2), dtype=torch.uint8, generator=g),
            "lmk": torch.rand(n, 68, 2, generator=g) * s, "label": torch.arange(n)}
    with StrayTransfers() as seen:
        moved = modelinput.to_device(host, torch.device("meta"), card.input_size)
        x = modelinput.normalise(augment.augment_batch(moved, _augment(True), torch.Generator().manual_seed(1),
                                                       torch.tensor(card.mean) * 255.0), card, True)
    assert x["image"].device.type == "meta" and x["image"].shape == (n, 3, 224, 224)
    assert seen.found == [], f"host tensors reached the device outside host_to: {seen.found}"


def test_host_to_leaves_other_devices_to_a_plain_copy():
    from fermodels.modelinput import host_to

    t = torch.arange(6).reshape(2, 3).t()
    assert host_to(t, "cpu") is t and host_to(t, torch.device("meta")).device.type == "meta"
