"""The training benchmark runs end to end (``--quick``, in-process) and prints its ratios last.

Timings are not asserted (other jobs share the machine); only that every model and loader
configuration was measured.
"""
from __future__ import annotations

import math
import re

import pytest

from tests.bench.helpers import load_bench


def test_quick_benchmark_prints_ratios_last(capsys):
    results = load_bench("bench_train").main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    tail = out[out.index("\nratios (loader alone / train step"):]
    assert set(results["train"]) >= {"resnet18_112/cpu/fp32+cl", "convcut/cpu/fp32+cl"}
    assert set(results["loader"]) == {"image@112", "image@224, resized to 224 in the workers"}     # CPU rows
    assert set(results["fed"]) == set(results["wait"]) == set(results["train"])
    assert all(0 <= w < 1 for w in results["wait"].values())
    assert all(v > 0 for part in ("train", "fed", "loader", "ratio") for v in results[part].values())
    loader_of = {"resnet18_112": "image@112", "convcut": "image@224, resized to 224 in the workers"}
    for tag, rate in results["train"].items():
        assert math.isclose(results["ratio"][tag], results["loader"][loader_of[tag.split("/")[0]]] / rate)
        line = re.search(rf"^  {re.escape(tag)}\s+(\d+\.\d\d)x   waiting\s+(\d+\.\d)%$", tail, flags=re.M)
        assert line, (tag, tail)
        assert float(line[1]) == round(results["ratio"][tag], 2)
        assert float(line[2]) == round(100 * results["wait"][tag], 1)


def test_the_loader_alone_is_the_loader_the_step_is_fed_by(monkeypatch):
    """Bug guarded: the "loader alone" rate (the ratio's numerator) always decoded as for a GPU, 112 px
    batches scaled on the device, also for CPU rows, where the trainer's workers resize a 224 px
    model's batches themselves (2.3x slower on this VM): loader / step overstated the loader's margin."""
    bench = load_bench("bench_train")
    sides = []
    real = bench.stream_loader

    def spy(plans, decoder, **kw):
        sides.append(decoder.side)
        return real(plans, decoder, **kw)

    monkeypatch.setattr(bench, "stream_loader", spy)
    results = bench.main(["--quick", "--threads", "1", "--devices", "cpu", "--models", "convcut"])
    assert len(sides) == 2 and set(sides) == {224}, sides           # loader alone, then the fed step
    assert list(results["loader"]) == ["image@224, resized to 224 in the workers"]


@pytest.mark.slow
def test_cpu_compile_setting_runs(capsys):
    """The torch.compile configuration (what a GPU run times) works end to end, here on the CPU."""
    results = load_bench("bench_train").main(["--quick", "--threads", "1", "--models", "resnet18_112", "--cpu-compile"])
    assert set(results["train"]) == {"resnet18_112/cpu/fp32+cl", "resnet18_112/cpu/fp32+cl+compile"}
    assert results["fed"]["resnet18_112/cpu/fp32+cl+compile"] > 0


def test_devices_are_chosen_or_refused_plainly():
    bench = load_bench("bench_train")
    assert bench.bench_devices("cpu") == [bench.torch.device("cpu")]
    assert bench.bench_devices("auto")[0].type == "cpu"
    with pytest.raises(SystemExit, match="use cpu, cuda"):
        bench.bench_devices("tpu")
    if not bench.torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench.bench_devices("cuda")


def test_device_time_counts_each_kernel_once():
    """Bug guarded: the device-busy share summed every profiler event, but kineto gives an aten op
    the time of the kernel it launched too, beside the kernel's own (CUDA-type) event: busy read
    about 2x, past 1.0. Only device-type events count (and the legacy profiler's CPU events)."""
    from types import SimpleNamespace as Event

    from torch.autograd import DeviceType

    bench = load_bench("bench_train")
    events = [Event(key="aten::conv2d", device_type=DeviceType.CPU, self_device_time_total=300.0, is_legacy=False),
              Event(key="sm80_conv_kernel", device_type=DeviceType.CUDA, self_device_time_total=300.0,
                    is_user_annotation=False),
              Event(key="ProfilerStep", device_type=DeviceType.CUDA, self_device_time_total=900.0,
                    is_user_annotation=True),
              Event(key="legacy::conv", device_type=DeviceType.CPU, self_device_time_total=50.0, is_legacy=True)]
    work = bench.device_events(events)
    assert [e.key for e in work] == ["sm80_conv_kernel", "legacy::conv"]
    assert sum(bench._self_device_us(e) for e in work) == 350.0


def test_profile_says_where_a_step_goes(capsys):
    """``--profile``: the named steps under torch.profiler, their busiest ops, and the device's busy
    share of the step printed last (0 on the CPU, where there is no device time)."""
    bench = load_bench("bench_train")
    results = bench.main(["--quick", "--threads", "1", "--devices", "cpu", "--profile", "resnet18_112/fp32+cl"])
    out = capsys.readouterr().out
    got = results["profile"]["resnet18_112/fp32+cl"]
    assert got["step_ms"] > 0 and got["profiled_step_ms"] > 0 and got["device_ms"] == got["busy"] == 0
    assert re.search(r"most host time per step: ms, calls\n\s+\d+\.\d{3}\s+\d+\.\d\s+aten::", out)
    tail = out[out.index("\nratios (device busy / step"):]
    assert re.search(r"^  resnet18_112/fp32\+cl\s+0\.00   step \d+\.\d\d ms$", tail, flags=re.M), tail
    with pytest.raises(SystemExit, match="expected model/setting"):
        bench.main(["--quick", "--devices", "cpu", "--profile", "resnet18_112/bf16"])       # a GPU setting


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", ["resnet18_112", "convcut", "pcda"])
def test_the_fixed_batch_is_the_one_the_loader_hands_the_trainer(tmp_path, name, device):
    """On a GPU the loader hands a 224 px model 112 px batches that to_device scales there, and
    everywhere pixels NHWC in memory: the step was timed on a 224 px NCHW batch (no scaling timed,
    4x the bytes copied, another layout). travel_side reads only the device's type: no GPU needed."""
    import torch

    from fermodels.data import SampleDecoder, travel_side
    from fermodels.registry import create_model
    from fermodels.shardsplit import open_split
    from fermodels.stream import stream_loader

    bench = load_bench("bench_train")
    card = create_model(name, **bench.QUICK_KWARGS.get(name, {})).card
    dev = torch.device(device)
    split = open_split([bench.make_shards(tmp_path, 16, 250)], "train")
    decoder = SampleDecoder(card.fields, card.input_size, wire=travel_side(card.input_size, bench.STORED, dev))
    real = next(iter(stream_loader(bench.epoch_plans(split.shards, 16, 4, 0, 16), decoder, workers=0,
                                   shuffle_buffer=16, seed=0, repeat=None)))
    fixed = bench.example_uint8(card, 4, dev)
    for field in card.fields:
        a, b = real[field], fixed[field]
        assert (tuple(b.shape), b.dtype, b.stride()) == (tuple(a.shape), a.dtype, a.stride()), field
