"""The weight average: its update rule by hand, and the trainer validating, saving and resuming it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fermodels.train as trainer
from fermodels.ema import WeightAverage
from fermodels.runstate import load_checkpoint
from fermodels.train import train

from tests.fermodels.helpers import make_params


def test_update_by_hand_with_the_warm_up_and_buffers():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert not any(p.requires_grad for p in avg.module.parameters()) and not avg.module.training
    steps = []
    for step in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
            net[1].running_mean.add_(2.0)
            net[1].num_batches_tracked.add_(1)
        steps.append({k: v.clone() for k, v in net.state_dict().items()})
        avg.update(net, step)
    # d = min(0.9, (1 + t) / (10 + t)): 0.1, 2/11, 3/12
    want_w, want_m = start["0.weight"].clone(), start["1.running_mean"].clone()
    for t, now in enumerate(steps):
        d = min(0.9, (1 + t) / (10 + t))
        want_w = d * want_w + (1 - d) * now["0.weight"]
        want_m = d * want_m + (1 - d) * now["1.running_mean"]
    got = avg.state_dict()
    torch.testing.assert_close(got["0.weight"], want_w)
    torch.testing.assert_close(got["1.running_mean"], want_m)
    assert int(got["1.num_batches_tracked"]) == 3                       # counts are copied, not averaged
    assert avg.decay_at(10_000) == 0.9
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightAverage(net, 1.0)


def test_best_pt_holds_the_average_that_was_validated_and_last_pt_both(tiny_shards, tmp_path, monkeypatch,
                                                                      one_thread):
    scored, real = [], trainer.score_split
    monkeypatch.setattr(trainer, "score_split", lambda model, *a: scored.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}) or real(model, *a))
    best = train(tiny_shards, make_params(epochs=1, ema_decay=0.9), tmp_path / "ckpt", tmp_path / "live")
    b, last = (load_checkpoint(tmp_path / "ckpt" / f"{n}.pt") for n in ("best", "last"))
    assert best["epoch"] == 0 and b["step"] == last["step"] and len(scored) == 1
    keys = [k for k, v in last["state_dict"].items() if v.is_floating_point()]
    assert all(torch.equal(scored[0][k], b["state_dict"][k]) for k in keys)
    assert all(torch.equal(b["state_dict"][k], last["ema"][k]) for k in keys)
    assert any(not torch.equal(b["state_dict"][k], last["state_dict"][k]) for k in keys)
    assert "ema" not in b
    plain = train(tiny_shards, make_params(epochs=1), tmp_path / "plain", tmp_path / "plive")
    assert "ema" not in load_checkpoint(tmp_path / "plain" / "last.pt")
    assert plain["epoch"] == 0
