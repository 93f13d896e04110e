"""The evaluator on tiny shards: DVC metrics/plots files, the batch-composition check (which must
catch convcut_paper), flip TTA, cross-dataset scoring, metrics per named test subset (and
`ferdata verify`'s check of the subset lists), and the two stage scripts."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ferdata.tario import iter_tar_samples
from ferdata.verify import verify_shards
from fermodels.data import SampleDecoder
from fermodels.evaluate import EvalParams, evaluate, predict_loader
from fermodels.indexed import IndexedSplit, indexed_loader
from fermodels.runstate import load_checkpoint, model_from_checkpoint
from fermodels.shardsplit import open_split
from fermodels.train import train

from tests.fermodels.helpers import REPO, TINY_MODEL, build_shards, make_params

PARAMS = EvalParams(split="test", batch_size=4, workers=0, device="cpu", flip_tta=False, batch_check=True, seed=0)


def test_metrics_and_plots_files(tiny_run, tmp_path, one_thread):
    m = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], PARAMS, tmp_path)
    info = json.loads((tiny_run["shards"] / "test" / "_info.json").read_text())
    assert m["num_samples"] == info["num_samples"] == sum(c["support"] for c in m["per_class"].values())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and saved["model"] == "convcut" and saved["split"] == "test"
    rows = json.loads((tmp_path / "confusion.json").read_text())
    assert len(rows) == m["num_samples"]
    assert np.mean([r["actual"] == r["predicted"] for r in rows]) == pytest.approx(m["accuracy"])
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    check = m["batch_composition"]
    assert check["independent_of_batch"], check
    assert set(check["orders"]) == {"shuffled", "class_sorted", "batch1"}
    assert all(o["accuracy"] == pytest.approx(m["accuracy"]) for o in check["orders"].values())
    assert m["cross_dataset"] is False and m["test_datasets"] == ["tiny"] and m["excluded"] == {}


def test_batch_check_exposes_the_batch_attention_leak(tiny_shards, tmp_path, one_thread, monkeypatch):
    import fermodels.train

    val_batches, original = [], fermodels.train.rank_loader

    def rank_loader(dataset, env, batch_size, *args, **kwargs):
        val_batches.append(batch_size)
        return original(dataset, env, batch_size, *args, **kwargs)

    monkeypatch.setattr(fermodels.train, "rank_loader", rank_loader)
    params = make_params(epochs=1, model="convcut_paper", model_kwargs=TINY_MODEL["model_kwargs"])
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    assert val_batches == [1]                   # training's validation scores it one face at a time too
    m = evaluate(tmp_path / "ckpt" / "best.pt", tiny_shards, PARAMS, tmp_path / "eval")
    check = m["batch_composition"]
    assert check["independent_of_batch"] is False
    assert set(check["orders"]) == {"shuffled", "class_sorted", "file_order"}    # the headline is one at a time
    assert check["orders"]["file_order"]["max_prob_diff"] > 1e-3
    # at evaluate.batch_size 1 every order ran one face at a time and the leak read independent_of_batch: true
    one = evaluate(tmp_path / "ckpt" / "best.pt", tiny_shards, replace(PARAMS, batch_size=1), tmp_path / "eval1")
    assert one["batch_composition"]["independent_of_batch"] is False, one["batch_composition"]
    model = model_from_checkpoint(load_checkpoint(tmp_path / "ckpt" / "best.pt"))
    data = IndexedSplit(open_split([tiny_shards], "test"), SampleDecoder(model.card.fields, model.card.input_size), 7)
    labels, alone, _ = predict_loader(model, indexed_loader(data, range(len(data)), 1, 0), model.card,
                                      torch.device("cpu"), flip_tta=False)
    assert m["accuracy"] == pytest.approx(float((alone.argmax(1) == labels).mean()))   # what predict would say
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")["best"]
    val = evaluate(tmp_path / "ckpt" / "best.pt", tiny_shards, replace(PARAMS, split="val", batch_check=False),
                   tmp_path / "val")
    assert {k: best[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")} == pytest.approx(
        {k: val[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")})      # selected as it is scored


class _NearTie(torch.nn.Module):
    """Two classes tied but for 1e-6 in the logits, which of the two leads depending on the batch
    size: the kind of rounding that moves with the batch on a GPU, with no sample reading another."""

    def forward(self, batch):
        n = batch["image"].shape[0]
        logits = torch.zeros(n, 7)
        logits[:, 1 if n == 1 else 0] += 1e-6
        return {"logits": logits}


def test_batch_check_tells_a_leak_from_a_tie_flipped_by_rounding(tiny_run, one_thread):
    from fermodels.evaluate import batch_composition_check

    card = model_from_checkpoint(load_checkpoint(tiny_run["ckpt"] / "best.pt")).card
    data = IndexedSplit(open_split([tiny_run["shards"]], "test"), SampleDecoder(card.fields, card.input_size), 7)
    cpu = torch.device("cpu")
    _, headline, _ = predict_loader(_NearTie(), indexed_loader(data, range(len(data)), 4, 0), card, cpu,
                                    flip_tta=False)
    check = batch_composition_check(_NearTie(), data, card, cpu, PARAMS, headline)
    assert check["orders"]["batch1"]["changed_predictions"] == len(data)           # every argmax flipped...
    assert check["orders"]["batch1"]["max_prob_diff"] < 1e-6
    assert check["independent_of_batch"] is True                                   # ...by rounding, not a leak


def test_validation_refuses_non_finite_probabilities_instead_of_scoring_class_0(monkeypatch):
    """argmax of a NaN row is 0: an overflowing model scored the val split's Neutral share, and that
    epoch could become best.pt, which the evaluate stage then refuses."""
    import fermodels.scoring as ev
    from fermodels.distributed import DistEnv

    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 0])
    probs = np.full((10, 7), 1 / 7, np.float32)
    probs[[1, 4]] = np.nan
    monkeypatch.setattr(ev, "predict_loader", lambda *a, **k: (labels, probs, [str(i) for i in range(10)]))
    model = torch.nn.Module()
    model.card = None
    with pytest.raises(ValueError, match=r"validation: the model's probabilities are not finite \(NaN or inf\) "
                                         r"for 2 of the 10 samples"):
        ev.score_split(model, None, 7, DistEnv(0, 1, 0), torch.device("cpu"), True)


def test_scores_are_full_float32_and_the_settings_restored():
    """TF32 off inside, whichever of torch's APIs the user set it with (reading the legacy flags
    after the new ones were set raises), and every setting as found afterwards."""
    from fermodels.scoring import full_float32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul

    def state() -> tuple:
        return conv.fp32_precision, matmul.fp32_precision

    before, legacy = state(), torch.get_float32_matmul_precision()
    try:
        for user_setting in (lambda: setattr(torch.backends.cudnn, "allow_tf32", True),         # legacy
                             lambda: setattr(matmul, "fp32_precision", "tf32"),                   # new API
                             lambda: torch.set_float32_matmul_precision("medium")):
            user_setting()
            mine = state()
            with full_float32():
                assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
            assert state() == mine
    finally:                                                          # nothing of this left for later tests
        torch.set_float32_matmul_precision(legacy)
        torch.backends.cudnn.allow_tf32 = True
        conv.fp32_precision, matmul.fp32_precision = before
    assert (state(), torch.get_float32_matmul_precision()) == (before, legacy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_face_scores_alike_in_any_batch_on_a_gpu_in_full_float32():
    """On a GPU, TF32 (cuDNN's default on Ampere and later) and kernels chosen by batch size moved a
    face's probabilities with its batch by more than SAME_PROB; in full float32 they stay within it.
    The probe's own difference with TF32 on is printed, not asserted (it depends on the card)."""
    from fermodels.evaluate import SAME_PROB
    from fermodels.scoring import full_float32
    from fermodels.examples import example_batch
    from fermodels.modelinput import normalise
    from fermodels.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18_112").cuda().eval()
    batch = normalise({k: v.cuda() for k, v in example_batch(model.card, 64).items()}, model.card)

    def worst() -> float:
        whole = model(batch)["logits"].softmax(-1)
        alone = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()})["logits"].softmax(-1)
                           for i in range(0, 64, 9)])
        return (whole[::9] - alone).abs().max().item()

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision = matmul.fp32_precision = "tf32"
        with torch.no_grad():
            print(f"max |probability difference|, batch 64 against 1, TF32: {worst():.2e}")
            with full_float32():
                assert worst() < SAME_PROB
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prediction_waits_for_the_gpu_once_not_per_batch(tiny_run):
    """Probabilities copied back per batch make the host wait for each forward before it queues the
    next batch; torch's sync debug mode counts each wait: three batches must wait as often as one."""
    model = model_from_checkpoint(load_checkpoint(tiny_run["ckpt"] / "best.pt")).cuda()
    card, gpu = model.card, torch.device("cuda")
    data = IndexedSplit(open_split([tiny_run["shards"]], "test"), SampleDecoder(card.fields, card.input_size), 7)
    assert len(data) >= 6

    def waits(n_batches: int) -> int:
        loader = indexed_loader(data, range(2 * n_batches), 2, 0)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                predict_loader(model, loader, card, gpu, flip_tta=True)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in seen)

    assert waits(3) == waits(1) >= 1


def test_flip_tta_averages_the_mirrored_prediction(tiny_run, one_thread):
    from fermodels.augment import hflip_batch
    from fermodels.modelinput import normalise, to_device

    model = model_from_checkpoint(load_checkpoint(tiny_run["ckpt"] / "best.pt"))
    card = model.card
    data = IndexedSplit(open_split([tiny_run["shards"]], "test"), SampleDecoder(card.fields, card.input_size), 7)
    cpu = torch.device("cpu")
    _, tta, _ = predict_loader(model, indexed_loader(data, range(len(data)), 4, 0), card, cpu, flip_tta=True)
    _, plain, _ = predict_loader(model, indexed_loader(data, range(len(data)), 4, 0), card, cpu, flip_tta=False)
    batch = normalise(to_device(next(iter(indexed_loader(data, range(4), 4, 0))), cpu), card)
    with torch.no_grad():
        mirrored = model(hflip_batch(batch))["logits"].softmax(-1).numpy()
    assert np.allclose(tta[:4], (plain[:4] + mirrored) / 2, atol=1e-6)
    assert np.allclose(tta.sum(1), 1.0, atol=1e-5)


def test_cross_dataset_scores_shared_classes_and_counts_the_rest(tiny_run, tiny8_shards, tmp_path, one_thread,
                                                                 caplog):
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        m = evaluate(tiny_run["ckpt"] / "best.pt", tiny8_shards, PARAMS, tmp_path)
    info = json.loads((tiny8_shards / "test" / "_info.json").read_text())
    assert (f"{info['class_histogram']['Contempt']} test sample(s) of classes a 7-class model cannot predict are "
            "left out: {'Contempt'") in caplog.text                  # the log's accuracy is over the rest only
    assert m["cross_dataset"] is True and m["test_datasets"] == ["tiny8"] and m["train_datasets"] == ["tiny"]
    assert m["excluded"] == {"Contempt": info["class_histogram"]["Contempt"]}
    assert m["num_samples"] == info["num_samples"] - info["class_histogram"]["Contempt"]
    both = evaluate(tiny_run["ckpt"] / "best.pt", [tiny_run["shards"], tiny8_shards],
                    EvalParams(**{**PARAMS.__dict__, "batch_check": False}), tmp_path / "both", ["tiny", "tiny8"])
    assert set(both["per_dataset"]) == {"tiny", "tiny8"} and both["cross_dataset"] is True
    assert sum(d["num_samples"] for d in both["per_dataset"].values()) == both["num_samples"]
    assert both["per_dataset"]["tiny8"]["excluded"] == m["excluded"] and both["per_dataset"]["tiny"]["excluded"] == {}
    assert both["excluded"] == m["excluded"]                     # the total: each dataset's own, summed
    state = torch.load(tiny_run["ckpt"] / "best.pt", weights_only=True)
    torch.save({**state, "datasets": ["tiny", "tiny8"]}, tmp_path / "two.pt")     # trained on both
    one = evaluate(tmp_path / "two.pt", tiny_run["shards"], EvalParams(**{**PARAMS.__dict__, "batch_check": False}),
                   tmp_path / "one", ["tiny"])
    assert one["cross_dataset"] is False                  # one of its training datasets: not cross-dataset
    assert (one["checkpoint"], one["epoch"]) == ("two.pt", state["epoch"])
    contempt = build_shards(tmp_path / "contempt", per_class=3, test_per_class=2, classes=range(7, 8),
                            protocol="affectnet8")
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        some = evaluate(tiny_run["ckpt"] / "best.pt", [tiny_run["shards"], contempt],
                        EvalParams(**{**PARAMS.__dict__, "batch_check": False}), tmp_path / "some", ["tiny", "c"])
    assert set(some["per_dataset"]) == {"tiny"}         # not a 0.0 accuracy for a dataset with nothing scored
    assert "c hold(s) no test sample a 7-class model can be scored on: left out of per_dataset" in caplog.text


def test_metrics_per_named_subset(tiny_run, tmp_path_factory, one_thread):
    """Records a reader tagged with ``options.subsets`` (occlusion / pose lists) are listed per split
    by the shard stage and scored apart by the evaluator; a tagged train record stays out of the test
    split's subsets, and a dataset without subsets reports none."""
    keys = sorted(json.loads(line)["key"] for line in _aligned_rows(tiny_run["shards"]))
    test_keys = sorted(k for k in keys if k.startswith("test"))
    occlusion, pose = set(test_keys[::3]), set(test_keys[1::2])
    train_key = next(k for k in keys if k.startswith("train"))
    shards = build_shards(tmp_path_factory.mktemp("data") / "tiny",
                          subsets={"occlusion": occlusion | {train_key}, "pose30": pose})
    info = json.loads((shards / "test" / "_info.json").read_text())
    assert info["subsets"] == {"occlusion": sorted(occlusion), "pose30": sorted(pose)}
    assert verify_shards(shards) == []
    m = evaluate(tiny_run["ckpt"] / "best.pt", shards, EvalParams(**{**PARAMS.__dict__, "batch_check": False}),
                 tmp_path_factory.mktemp("eval"))
    model = model_from_checkpoint(load_checkpoint(tiny_run["ckpt"] / "best.pt"))
    data = IndexedSplit(open_split([shards], "test"), SampleDecoder(model.card.fields, model.card.input_size), 7)
    labels, probs, got_keys = predict_loader(model, indexed_loader(data, range(len(data)), 4, 0), model.card,
                                             torch.device("cpu"), flip_tta=False)
    right = dict(zip(got_keys, probs.argmax(1) == labels))
    assert set(m["per_subset"]) == {"occlusion", "pose30"}
    for name, members in (("occlusion", occlusion), ("pose30", pose)):
        assert m["per_subset"][name]["num_samples"] == len(members)
        assert m["per_subset"][name]["accuracy"] == pytest.approx(np.mean([right[k] for k in members]))
    plain = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"],
                     EvalParams(**{**PARAMS.__dict__, "batch_check": False}), tmp_path_factory.mktemp("eval"))
    assert "per_subset" not in plain
    both = evaluate(tiny_run["ckpt"] / "best.pt", [shards, tiny_run["shards"]],
                    EvalParams(**{**PARAMS.__dict__, "batch_check": False}), tmp_path_factory.mktemp("eval"),
                    ["tagged", "plain"])
    assert set(both["per_subset"]) == {"tagged/occlusion", "tagged/pose30"}      # whose subset, named
    assert both["per_subset"]["tagged/pose30"]["num_samples"] == len(pose)


def test_evaluation_reads_exactly_the_listed_shards_and_checks_their_counts(tiny_shards, tmp_path):
    """A stray tar beside the listed shards (an old run's, a copy) is not read, as in training; a
    listed shard that lost samples (cut at a member boundary: still a valid tar) is refused."""
    import tarfile

    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    split = open_split([copy], "test")
    decoder = SampleDecoder(("image",), 112)
    first = Path(split.shards[0][0])
    shutil.copy2(first, first.with_name("test-000099.tar"))              # the same keys again
    data = IndexedSplit(split, decoder, 7)
    assert len(data) == split.num_samples and sorted(data.keys) == sorted(set(data.keys))

    with tarfile.open(first) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    last_key = members[-1][0].name.split(".")[0]
    with tarfile.open(first, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, payload in members:
            if m.name.split(".")[0] != last_key:
                tar.addfile(m, io.BytesIO(payload))
    listed = split.shards[0][1]
    with pytest.raises(ValueError, match=rf"{listed - 1} samples, _info.json says {listed}: .*ferdata verify"):
        IndexedSplit(split, decoder, 7)


def test_a_split_indexed_anew_reads_the_shard_now_at_its_path(tiny_shards, tmp_path):
    """A shard replaced at its path (re-prepared: a new file renamed over the old, as the writers and
    `dvc checkout` do) was read in the same process through the descriptor kept for the old file:
    its old labels and pixels, silently, under the new index."""
    import tarfile

    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    decoder = SampleDecoder(("image",), 112)
    first = IndexedSplit(open_split([copy], "test"), decoder, 8)
    assert first[0]["cls"]                                    # a read: this process now holds the file open
    path = Path(first.members[0]["cls"][0])
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    relabelled = {m.name: (b"%d" % ((int(data) + 1) % 7) if m.name.endswith(".cls") else data[::-1])
                  for m, data in members}                    # same sizes: the listed bytes still match
    new = path.with_name("new.tmp")
    with tarfile.open(new, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, _ in members:
            tar.addfile(m, io.BytesIO(relabelled[m.name]))
    os.replace(new, path)
    second = IndexedSplit(open_split([copy], "test"), decoder, 8)
    mine = [i for i, m in enumerate(second.members) if m["cls"][0] == str(path)]
    assert mine
    for i in mine:
        key = second.keys[i]
        assert second[i]["cls"] == relabelled[f"{key}.cls"]
        assert second[i]["jpg"] == relabelled[f"{key}.jpg"]
        assert second.labels[i] == int(relabelled[f"{key}.cls"])


def test_two_datasets_in_one_split_keep_their_own_shards(tiny_shards, tiny8_shards):
    """Each sample is attributed to the dataset whose _info.json lists its shard (per-dataset
    metrics and subsets rest on it)."""
    split = open_split([tiny_shards, tiny8_shards], "test")
    for d in (tiny_shards, tiny8_shards):
        alone = open_split([d], "test")
        assert split.shards_of(str(d)) == alone.shards
    data = IndexedSplit(split, SampleDecoder(("image",), 112), 8)
    for i, d in enumerate((tiny_shards, tiny8_shards)):
        mine = {k for k, w in zip(data.keys, data.dataset_index) if w == i}
        assert mine == {k for path, _ in open_split([d], "test").shards for k, _ in iter_tar_samples(path)}


def test_verify_flags_subset_keys_that_are_not_in_the_shards(tiny_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    info_path = copy / "test" / "_info.json"
    info = json.loads(info_path.read_text())
    info["subsets"] = {"occlusion": ["test-2-nowhere"]}
    info_path.write_text(json.dumps(info))
    problems = verify_shards(copy)
    assert len(problems) == 1 and "subset 'occlusion'" in problems[0] and "test-2-nowhere" in problems[0]


def _aligned_rows(shards):
    """The aligned stage's per-sample JSON of the dataset whose shards are ``shards``."""
    from ferdata.tario import iter_dir_samples

    for key, fields in iter_dir_samples(shards.parent / "aligned", "aligned"):
        yield fields["json"].decode()


def test_bad_split_is_refused(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="split"):
        evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], EvalParams(**{**PARAMS.__dict__, "split": "dev"}),
                 tmp_path)


@pytest.mark.slow
def test_stage_scripts_train_and_evaluate(tiny_shards, tmp_path):
    """pipeline/select.py, train.py and evaluate.py as dvc runs them (cwd with params.yaml and data/)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(TINY_MODEL, datasets=["tiny"], epochs=1, batch_size=8, workers=0, device="cpu",
                           shuffle_buffer=8)
    params["evaluate"].update(workers=0, device="cpu", batch_check=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "tiny").mkdir(parents=True)
    (tmp_path / "data" / "tiny" / "shards").symlink_to(tiny_shards)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for cmd in (["pipeline.select", "data", "sel"], ["pipeline.train", "sel/train.json", "ckpt", "live"],
                ["pipeline.evaluate", "ckpt/best.pt", "sel/evaluate.json", "eval"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env, check=True, capture_output=True)
    state = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert state["preprocess"]["derive"]["heatmap_size"] == params["derive"]["heatmap_size"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test_datasets"] == ["tiny"] and metrics["num_samples"] > 0


def test_the_evaluate_stage_names_a_checkpoint_trained_on_other_datasets(tiny_run, tmp_path, monkeypatch):
    """train.datasets changed and selected anew, the old checkpoint evaluated by hand: the error said the
    params ask for the checkpoint's datasets, and to re-run select, which changes nothing."""
    import runpy

    from ferdata.selection import SelectionError, write_selection

    ckpt = tiny_run["ckpt"] / "best.pt"
    trained_on = load_checkpoint(ckpt)["datasets"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(dataset=None, workers=0, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in (*trained_on, "other"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "shards").symlink_to(tiny_run["shards"])
    write_selection(tmp_path / "sel.json", tmp_path / "data", [*trained_on, "other"], ("test",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline.evaluate", str(ckpt), "sel.json", "eval"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(SelectionError) as err:
        runpy.run_module("pipeline.evaluate", run_name="__main__", alter_sys=True)
    assert f"but {ckpt} was trained on {sorted(trained_on)}: retrain on the selected ones (`dvc repro train`)" \
        in str(err.value), err.value
    assert not (tmp_path / "eval").exists()


def test_non_finite_probabilities_are_an_error_not_class_0(tiny_run, tmp_path, monkeypatch, one_thread):
    """argmax of a NaN row is 0: a model that overflows scored every such sample as Neutral."""
    import fermodels.evaluate as ev

    real = ev.predict_loader

    def overflowing(*args, **kwargs):
        labels, probs, keys = real(*args, **kwargs)
        probs[1, 2] = np.nan                             # one class's probability is enough
        return labels, probs, keys

    monkeypatch.setattr(ev, "predict_loader", overflowing)
    with pytest.raises(ValueError, match="not finite \\(NaN or inf\\) for 1 of the \\d+ test samples"):
        evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], PARAMS, tmp_path)


def test_a_negative_seed_is_refused_when_read():
    """It passed and failed after the whole test set was predicted, naming no key."""
    from dataclasses import replace

    with pytest.raises(ValueError, match="evaluate.seed must be >= 0, got -1"):
        replace(PARAMS, seed=-1)


def _shards_with(src: Path, dst: Path, **preprocess) -> Path:
    """A copy of ``src`` whose test split records other align/derive settings ({section: {key: value}})."""
    shutil.copytree(src, dst)
    info_path = dst / "test" / "_info.json"
    info = json.loads(info_path.read_text())
    for section, values in preprocess.items():
        info["preprocess"][section].update(values)
    info_path.write_text(json.dumps(info))
    return dst


def test_faces_made_otherwise_than_the_training_faces_are_refused(tiny_run, tmp_path, one_thread, caplog):
    """A checkpoint trained on crops of padding 0.0 was scored on crops of padding 0.3 without a
    word, and the figure read as a same-dataset result. Another stored size or JPEG quality (the
    loader resizes the crop) is scored with a warning; a setting of a field the model does not
    read is no matter."""
    ckpt = tiny_run["ckpt"] / "best.pt"
    fields = model_from_checkpoint(load_checkpoint(ckpt)).card.fields
    assert "heatmap" not in fields and not {"left", "right"} & set(fields)
    padded = _shards_with(tiny_run["shards"], tmp_path / "padded" / "shards", align={"padding": 0.3})
    with pytest.raises(ValueError, match=r"made otherwise than .*best.pt's training faces: align.padding 0.0 "
                                         r"\(training\) vs 0.3\. Prepare the test data with the training's"):
        evaluate(ckpt, padded, PARAMS, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    other_heatmaps = _shards_with(tiny_run["shards"], tmp_path / "hm" / "shards", derive={"heatmap_size": 56})
    fast = EvalParams(**{**PARAMS.__dict__, "batch_check": False})
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        assert evaluate(ckpt, other_heatmaps, fast, tmp_path / "ok")["num_samples"] > 0   # not this model's input
    assert "stored otherwise" not in caplog.text
    q90 = _shards_with(tiny_run["shards"], tmp_path / "q90" / "shards", align={"jpeg_quality": 90})
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        assert evaluate(ckpt, q90, fast, tmp_path / "q90eval")["num_samples"] > 0
    assert "stored otherwise than the training faces (align.jpeg_quality 95 (training) vs 90)" in caplog.text


def test_one_name_for_two_folders_and_a_dataset_folder_for_its_shards_are_named(tiny_run, tmp_path):
    copy = tmp_path / "b" / "tiny" / "shards"
    shutil.copytree(tiny_run["shards"], copy)
    with pytest.raises(ValueError, match=r"must name each of the 2 shard folders once .*pass datasets="):
        evaluate(tiny_run["ckpt"] / "best.pt", [tiny_run["shards"], copy], PARAMS, tmp_path / "eval")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'b' / 'tiny'} is a dataset's folder; give its "
                                                rf"shards folder, {copy}"):
        evaluate(tiny_run["ckpt"] / "best.pt", tmp_path / "b" / "tiny", PARAMS, tmp_path / "eval")


def test_the_stored_side_skips_a_shard_without_faces_and_prefers_the_record(tiny_shards, tmp_path):
    import tarfile

    from fermodels.shardsplit import stored_side

    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    split = open_split([copy], "test")
    empty = copy / "test" / "test-000099.tar"                 # beside the others: the folder's first
    with tarfile.open(empty, "w"):
        pass
    unrecorded = replace(split, shards=((str(empty), 0), *split.shards), preprocess={})
    assert stored_side(unrecorded) == 112                  # "no face image in the first shard" before
    recorded = replace(split, shards=(), preprocess={**split.preprocess, "align": {
        **split.preprocess["align"], "size": 96}})
    assert stored_side(recorded) == 96
    with pytest.raises(ValueError, match="no face image in the test shards of"):
        stored_side(replace(split, shards=((str(empty), 0),), preprocess={}))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_validate_every_sample_once(tiny_shards, world):
    from fermodels.distributed import DistEnv
    from fermodels.scoring import rank_loader

    data = IndexedSplit(open_split([tiny_shards], "val"), SampleDecoder(("image",), 112), 7)
    seen = [key for rank in range(world) for batch in rank_loader(data, DistEnv(rank, world, rank), 4, 0)
            for key in batch["key"]]
    assert sorted(seen) == sorted(data.keys) and len(seen) == len(data) > world


def test_the_batch_check_reports_the_largest_change_of_any_face():
    from fermodels.evaluate import _compare

    ref = np.full((50, 7), 1 / 7, np.float32)
    moved = ref.copy()
    moved[17, :2] += (0.01, -0.01)                        # one face leaks: an average would hide it
    assert _compare(ref, moved, np.zeros(50, np.int64))["max_prob_diff"] == pytest.approx(0.01)


def test_full_float32_holds_for_every_thread_inside_and_restores_the_settings_found():
    """The settings are the process's: two threads (one Predictor in a thread-pool server) each saved
    and restored them, so the second thread's forward ended under TF32 (the first one's restore) and
    the process was left at "ieee" for good (the second one's)."""
    import threading
    import time

    from fermodels.scoring import full_float32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    seen = []

    def score(delay):
        time.sleep(delay)
        with full_float32():
            seen.append(conv.fp32_precision)
            time.sleep(0.3)
            seen.append(conv.fp32_precision)              # the second thread's forward ends after the first's

    threads = [threading.Thread(target=score, args=(d,)) for d in (0.0, 0.1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision, matmul.fp32_precision = before
    assert seen == ["ieee"] * 4 and after == before, (seen, after, before)


def test_preprocessing_is_compared_only_where_both_sides_record_it(caplog):
    from fermodels.evaluate import check_preprocess

    shards = {"align": {"padding": 0.2, "size": 112}, "derive": {"jpeg_quality": 90}}
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        check_preprocess({}, shards, ("image",), "old.pt", [])        # a checkpoint of an older version
        assert caplog.text == ""
        check_preprocess(shards, {}, ("image",), "new.pt", ["old/test"])  # shards of an older version: said
    assert "old/test record no align/derive settings" in caplog.text and "new.pt's training faces" in caplog.text
    with pytest.raises(ValueError, match=r"align.padding 0.2 \(training\) vs None"):
        check_preprocess(shards, {"align": {"size": 112}, "derive": {}}, ("image",), "a.pt", [])
    with caplog.at_level("WARNING", logger="fermodels.evaluate"):
        check_preprocess(shards, {**shards, "derive": {"jpeg_quality": 75}}, ("image", "left", "right"), "h.pt", [])
    assert "derive.jpeg_quality 90 (training) vs 75" in caplog.text      # the halves are derive's JPEGs


class _Layout(torch.nn.Module):
    """Records the memory format of the images it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, batch):
        self.seen.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        return {"logits": torch.zeros(batch["image"].shape[0], 7)}


@pytest.mark.parametrize("channels_last", [True, False])
def test_scoring_feeds_the_layout_asked_for(tiny_run, channels_last, monkeypatch):
    """Evaluation and prediction run model and images channels_last (on this CPU NCHW throughout
    was ~1.3x slower); training's validation follows train.channels_last."""
    import fermodels.evaluate as ev

    card = model_from_checkpoint(load_checkpoint(tiny_run["ckpt"] / "best.pt")).card
    data = IndexedSplit(open_split([tiny_run["shards"]], "test"), SampleDecoder(card.fields, card.input_size), 7)
    probe = _Layout()
    predict_loader(probe, indexed_loader(data, range(4), 2, 0), card, torch.device("cpu"), flip_tta=False,
                   channels_last=channels_last)
    assert probe.seen == [channels_last] * 2

    class Seen(Exception):
        pass

    def record(model, *args, **kwargs):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        raise Seen(kwargs.get("channels_last", True), conv.is_contiguous(memory_format=torch.channels_last))

    monkeypatch.setattr(ev, "predict_loader", record)
    with pytest.raises(Seen) as seen:
        evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], PARAMS, Path("unused"))
    assert seen.value.args == (True, True)                                  # images and weights alike


def test_an_output_folder_that_is_a_file_is_told_before_the_scoring(tiny_run, tmp_path, monkeypatch):
    """`python -m pipeline.evaluate CKPT SELECTION OUT` with OUT an existing file said so after scoring
    every sample (16 s on the sample, minutes on AffectNet)."""
    import fermodels.evaluate as evaluation

    def not_now(*args, **kwargs):
        raise AssertionError("scored before the output folder was checked")
    monkeypatch.setattr(evaluation, "predict_loader", not_now)
    (tmp_path / "out").write_text("not a folder\n")
    for out in (tmp_path / "out", tmp_path / "out" / "eval"):
        with pytest.raises(ValueError, match=rf"evaluate cannot write in {out} \(.*out is a file\)"):
            evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], PARAMS, out)


def test_one_set_of_loader_workers_serves_every_pass(tiny_run, tmp_path, one_thread, monkeypatch):
    """The headline pass and the batch check's three orders each started their own loader workers: under
    spawn or forkserver ~2.4 s a pass, the sample's evaluation 2x fork's. One set serves them all now,
    and the passes' batches are indexed_loader's (the same metrics, batch check included)."""
    import fermodels.indexed as indexed

    started = tmp_path / "started"
    started.mkdir()

    def counted(worker_id: int) -> None:
        (started / f"{os.getpid()}-{worker_id}").touch()
    monkeypatch.setattr(indexed, "one_thread_per_worker", counted)
    params = replace(PARAMS, workers=2)
    got = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], params, tmp_path / "out")
    assert len(list(started.iterdir())) == 2                   # 8 before: 2 workers x 4 passes
    alone = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], PARAMS, tmp_path / "alone")
    assert got == alone and got["batch_composition"]["orders"].keys() == {"shuffled", "class_sorted", "batch1"}


def test_faces_placed_otherwise_than_the_training_faces_are_warned_about(caplog):
    """A model trained on a dataset's own landmarks (annotations) scored on detected faces (embedded: RetinaFace's
    keypoints, a few pixels of 112 elsewhere) was scored silently: the sample's held-out pictures gave 83% prepared
    with annotations and 64% prepared with embedded, with no word that the faces were framed otherwise."""
    from fermodels.evaluate import check_face_sources

    shards = [Path("data/other/shards")]
    with caplog.at_level("WARNING", logger="fermodels"):
        check_face_sources({"annotations": 90}, {"embedded": 30}, "best.pt", shards)
    assert "placed by a face detector's keypoints" in caplog.text and "the dataset's own landmarks" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fermodels"):
        check_face_sources({"embedded": 90}, {"insightface": 30}, "best.pt", shards)      # detectors both
        check_face_sources({"annotations": 90, "embedded": 9}, {"embedded": 30}, "best.pt", shards)   # trained on both
        check_face_sources({}, {"embedded": 30}, "best.pt", shards)                         # an older checkpoint
    assert not caplog.records


def test_metrics_json_names_the_classes_scored_and_averaged(tiny_run, tiny8_shards, tmp_path, one_thread):
    """metrics.json said how many faces were left out (``excluded``) but not which classes the model has nor
    which classes mean class accuracy and macro-F1 average over: ``per_class`` also lists a class that is only
    predicted (support 0, recall 0), which the averages leave out."""
    m = evaluate(tiny_run["ckpt"] / "best.pt", tiny8_shards, replace(PARAMS, batch_check=False), tmp_path, ["tiny8"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    info = json.loads((tiny8_shards / "test" / "_info.json").read_text())
    assert saved["classes"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert saved["averaged_over"] == [c for c in saved["classes"] if info["class_histogram"].get(c)]
    assert m["mean_class_accuracy"] == pytest.approx(
        np.mean([m["per_class"][c]["recall"] for c in saved["averaged_over"]]))


def test_shards_of_another_class_order_are_refused_not_read_by_index(tiny_run, tmp_path):
    """``_info.json`` names its class order (``label_map``); training and evaluation read each ``cls`` as an
    index of :data:`CLASSES` whatever it says: shards in RAF-DB's order were scored against the wrong classes
    (a perfect model at 0.0), where only `ferdata verify` said so."""
    from ferdata.classes import CLASSES, NATIVE_TO_CANONICAL
    from tests.fermodels.helpers import copy_shards

    raf_order = [CLASSES[c] for c in NATIVE_TO_CANONICAL["rafdb"]]
    shards = copy_shards(tiny_run["shards"], tmp_path / "shards", lambda info: info.update(label_map=raf_order))
    with pytest.raises(ValueError, match="label_map .* is not the class order"):
        evaluate(tiny_run["ckpt"] / "best.pt", shards, PARAMS, tmp_path / "eval")
    with pytest.raises(ValueError, match="label_map .* is not the class order"):
        train(shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")


def test_split_all_scores_a_cross_dataset_target_whole(tiny_run, tiny8_shards, tmp_path, one_thread):
    """A cross-dataset target without an official test split (JAFFE, CK+, a folder dataset) was scored on
    its carved shard.test_fraction only (JAFFE's 10 people: one person) with no setting to score it whole, as
    cross-dataset protocols do; ``evaluate.split: all`` scores every split of a dataset the model did not
    train on, through the stage scripts too, and is refused for a training dataset."""
    from fermodels.evaluate import evaluate_section

    infos = {s: json.loads((tiny8_shards / s / "_info.json").read_text()) for s in ("train", "val", "test")}
    contempt = sum(i["class_histogram"].get("Contempt", 0) for i in infos.values())
    m = evaluate(tiny_run["ckpt"] / "best.pt", tiny8_shards, replace(PARAMS, split="all", batch_check=False),
                 tmp_path / "all", ["tiny8"])
    assert m["split"] == "all" and m["cross_dataset"] is True and m["excluded"] == {"Contempt": contempt}
    assert m["num_samples"] == sum(i["num_samples"] for i in infos.values()) - contempt
    with pytest.raises(ValueError, match="which best.pt was trained on"):
        evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], replace(PARAMS, split="all"), tmp_path / "own",
                 ["tiny"])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(ValueError, match="evaluate.dataset null"):
        evaluate_section({**params, "evaluate": {**params["evaluate"], "split": "all", "dataset": None}})
    params["train"].update(datasets=["tiny"])
    params["evaluate"].update(dataset="tiny8", split="all", workers=0, device="cpu", batch_check=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name, shards in (("tiny", tiny_run["shards"]), ("tiny8", tiny8_shards)):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "shards").symlink_to(shards)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for cmd in (["pipeline.select", "data", "sel"],
                ["pipeline.evaluate", str(tiny_run["ckpt"] / "best.pt"), "sel/evaluate.json", "eval"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert sorted(json.loads((tmp_path / "sel" / "evaluate.json").read_text())["datasets"]["tiny8"]["splits"]) == \
        ["test", "train", "val"]
    staged = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (staged["split"], staged["num_samples"], staged["excluded"]) == ("all", m["num_samples"], m["excluded"])


def test_shards_written_before_label_map_was_recorded_are_read_in_the_canonical_order(tiny_run, tmp_path, one_thread):
    """The label_map check must not refuse shards whose _info.json has no label_map (the shard stage wrote
    every split in CLASSES' order before recording it): they are scored and trained on as before."""
    from tests.fermodels.helpers import copy_shards

    shards = copy_shards(tiny_run["shards"], tmp_path / "shards", lambda info: info.pop("label_map", None))
    assert "label_map" not in json.loads((shards / "test" / "_info.json").read_text())
    old = evaluate(tiny_run["ckpt"] / "best.pt", shards, replace(PARAMS, batch_check=False), tmp_path / "old")
    new = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], replace(PARAMS, batch_check=False), tmp_path / "new")
    assert old["accuracy"] == new["accuracy"] and old["num_samples"] == new["num_samples"]
    train(shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")


def test_the_evaluate_stage_under_torchrun_is_refused_before_scoring(tiny_run, tmp_path, monkeypatch):
    """`torchrun --nproc_per_node=2 -m pipeline.evaluate ...` joined no process group: every rank scored
    every face (W times the work, on every GPU) and wrote the same metrics.json, confusion.json and png."""
    import runpy

    from ferdata.selection import write_selection

    ckpt = tiny_run["ckpt"] / "best.pt"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(dataset=None, workers=0, device="cpu", batch_check=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in load_checkpoint(ckpt)["datasets"]:
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "shards").symlink_to(tiny_run["shards"])
    write_selection(tmp_path / "sel.json", tmp_path / "data", load_checkpoint(ckpt)["datasets"], ("test",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(sys, "argv", ["pipeline.evaluate", str(ckpt), "sel.json", "eval"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(ValueError, match="the evaluate stage runs in one process, not under torchrun"):
        runpy.run_module("pipeline.evaluate", run_name="__main__", alter_sys=True)
    assert not (tmp_path / "eval").exists()
