"""The whole pipeline through the library (no `dvc` subprocess), on a handful of sample images."""
from __future__ import annotations

import json
from pathlib import Path

from ferdata.params import load_params, section
from ferdata.layout import stage_dirs
from ferdata.prepare import prepare
from ferdata.sample import SampleParams, make_affectnet_sample
from ferdata.verify import verify_shards
from fermodels.evaluate import EvalParams, evaluate
from fermodels.train import train
from fermodels.trainparams import TrainParams

REPO = Path(__file__).resolve().parents[1]


def small_params(tmp_path: Path) -> dict:
    params = load_params(REPO / "params.yaml")
    params["datasets"] = {"tiny": {"reader": "affectnet", "root": str(tmp_path / "raw"),
                                   "options": {"protocol": "affectnet7"}}}
    params["sample"].update(per_class=3)
    params["detect"].update(cache_dir=str(tmp_path / "cache"), workers=1)
    params["align"].update(workers=1)
    params["derive"].update(workers=1)
    params["shard"].update(maxcount=4, val_fraction=0.3)   # a handful of records still gets a val split
    train = {k: v for k, v in params["train"].items() if k != "dataset"}
    train.update(epochs=1, batch_size=4, workers=0, shuffle_buffer=8)
    params["train"] = train
    params["evaluate"] = {k: v for k, v in params["evaluate"].items() if k != "dataset"} | {"workers": 0}
    return params


def test_sample_to_metrics(tmp_path):
    params = small_params(tmp_path)
    make_affectnet_sample(tmp_path / "raw", SampleParams(**params["sample"]))
    reports = prepare("tiny", params, tmp_path / "data")
    n_records = 3 * len(params["sample"]["classes"])
    detect = reports["detect"]
    assert detect["kept"] + detect["dropped_total"] == n_records
    assert detect["kept"] >= n_records - 2, detect["dropped"]          # the real detector finds the faces
    assert reports["align"]["kept"] == detect["kept"] == reports["shard"]["kept"]

    shards = stage_dirs(tmp_path / "data", "tiny")["shards"]
    infos = {s: json.loads((shards / s / "_info.json").read_text()) for s in ("train", "val", "test")}
    assert sum(i["num_samples"] for i in infos.values()) == detect["kept"]
    assert infos["test"]["num_samples"] > 0 and infos["val"]["num_samples"] > 0
    assert verify_shards(shards) == []

    best = train(shards, section(TrainParams, params["train"], "train"), tmp_path / "ckpt", tmp_path / "live")
    assert best["epoch"] == 0
    assert (tmp_path / "ckpt" / "best.pt").is_file()
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["val"]["accuracy"] >= 0

    metrics = evaluate(tmp_path / "ckpt" / "best.pt", shards, section(EvalParams, params["evaluate"], "evaluate"),
                       tmp_path / "eval")
    assert metrics["num_samples"] == infos["test"]["num_samples"]
    for k in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert 0.0 <= metrics[k] <= 1.0
    rows = json.loads((tmp_path / "eval" / "confusion.json").read_text())
    assert len(rows) == metrics["num_samples"]
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert metrics["batch_composition"]["independent_of_batch"]


def test_cli_prepare_by_reader_name(tmp_path):
    """`ferdata prepare <reader> --root PATH` works without a params.yaml entry (in-process CLI)."""
    from typer.testing import CliRunner

    from ferdata.cli import app

    params = small_params(tmp_path)
    params["sample"].update(per_class=3)
    make_affectnet_sample(tmp_path / "raw", SampleParams(**params["sample"]))
    params.pop("datasets")
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["prepare", "affectnet", "--root", str(tmp_path / "raw"),
                                      "--out", str(tmp_path / "data"), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "affectnet" / "shards" / "train" / "_info.json").is_file()
    bad = CliRunner().invoke(app, ["prepare", "nosuchreader", "--root", str(tmp_path / "raw"),
                                   "--params", str(tmp_path / "params.yaml")])
    assert bad.exit_code != 0 and "affectnet" in str(bad.exception)

    # reader options from the command line: the same raw data without Happy
    seven = CliRunner().invoke(app, ["prepare", "affectnet", "--root", str(tmp_path / "raw"), "--out",
                                     str(tmp_path / "no_happy"), "--params", str(tmp_path / "params.yaml"),
                                     "--option", "exclude_classes=[happy]", "--option", "protocol=affectnet7"])
    assert seven.exit_code == 0, seven.output
    before = json.loads((tmp_path / "data" / "affectnet" / "detect" / "report.json").read_text())
    after = json.loads((tmp_path / "no_happy" / "affectnet" / "detect" / "report.json").read_text())
    happy = sum(json.loads((tmp_path / "data" / "affectnet" / "shards" / s / "_info.json").read_text())
                ["class_histogram"].get("Happy", 0) for s in ("train", "val", "test"))
    assert happy > 0 and after["dropped"]["excluded_class"] >= happy
    # every record accounted for: what the first run kept or dropped, the second kept or dropped
    assert after["kept"] + after["dropped_total"] == before["kept"] + before["dropped_total"]
    assert after["kept"] < before["kept"]
    for s in ("train", "val", "test"):
        info = json.loads((tmp_path / "no_happy" / "affectnet" / "shards" / s / "_info.json").read_text())
        assert info["class_histogram"].get("Happy", 0) == 0
    malformed = CliRunner().invoke(app, ["prepare", "affectnet", "--root", str(tmp_path / "raw"),
                                         "--params", str(tmp_path / "params.yaml"), "--option", "exclude_classes"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output


def test_automatic_affectnet_images_are_trained_on_never_validated_or_tested(tmp_path):
    """`options.automatic`: the automatically annotated images (here brightened copies of the manual
    training set in their own folder and list; exact copies would be dropped as duplicates) all land
    in the training shards; val (carved from train) and test hold manually annotated images only."""
    import shutil

    import cv2

    from ferdata.tario import iter_dir_samples

    params = small_params(tmp_path)
    params["sample"].update(per_class=3)
    raw = tmp_path / "raw"
    make_affectnet_sample(raw, SampleParams(**params["sample"]))
    for src in (raw / "Manually_Annotated_Images").rglob("*.jpg"):       # other images: a little brighter
        dst = raw / "Automatically_Annotated_Images" / src.relative_to(raw / "Manually_Annotated_Images")
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), cv2.add(cv2.imread(str(src)), 6))
    (raw / "Automatically_Annotated_file_lists").mkdir()
    shutil.copy2(raw / "Manually_Annotated_file_lists" / "training.csv",
                 raw / "Automatically_Annotated_file_lists" / "automatically_annotated.csv")
    params["datasets"] = {"affectnet": {"reader": "affectnet", "root": str(raw),
                                        "options": {"protocol": "affectnet7", "automatic": True}}}
    prepare("affectnet", params, tmp_path / "data")
    shards = stage_dirs(tmp_path / "data", "affectnet")["shards"]
    keys = {s: [k for k, _ in iter_dir_samples(shards / s, s)] for s in ("train", "val", "test")}
    auto = [k for k in keys["train"] if k.startswith("train_auto_")]
    manual_train = [k for k in keys["train"] if not k.startswith("train_auto_")]
    assert len(auto) == len(manual_train) + len(keys["val"]) > 0     # every manual training image, once more
    assert keys["val"] and keys["test"]
    assert not any("auto" in k for k in keys["val"] + keys["test"])


def test_a_dataset_sets_its_own_detect_values(tmp_path):
    """FER2013-like 48 px crops (precropped) prepared under a params.yaml whose detect backend is the
    face detector that RAF-DB's photos need: ``datasets.<name>.detect`` overrides the section."""
    import cv2
    import numpy as np
    import pytest

    root = tmp_path / "crops"
    for i in range(12):
        img = np.full((48, 48), 40 + 15 * i, np.uint8)
        (root / ("happy", "sad")[i % 2]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / ("happy", "sad")[i % 2] / f"{i}.png"), img)
    params = small_params(tmp_path)
    params["shard"]["test_fraction"] = 0.35             # 12 unsplit images: a carved test split that holds some
    params["datasets"]["crops"] = {"reader": "folder", "root": str(root), "options": {},
                                   "detect": {"backend": "precropped"}}
    assert params["detect"]["backend"] == "embedded"
    reports = prepare("crops", params, tmp_path / "data")
    assert reports["detect"]["kept"] == 12 and reports["detect"]["settings"]["backend"] == "precropped"
    info = json.loads((stage_dirs(tmp_path / "data", "crops")["shards"] / "train" / "_info.json").read_text())
    assert info["detect"]["backend"] == "precropped"
    assert info["source"] == {"reader": "folder", "options": {"dataset": "folder", "exclude_classes": [], "mapping": {},
                                                              "subject": None, "subsets": {}}}  # what they were read as
    params["datasets"]["crops"]["detect"] = {"backend": "precropped", "selct": "largest"}
    with pytest.raises(ValueError, match=r"datasets\.crops\.detect: unknown keys \['selct'\]"):
        prepare("crops", params, tmp_path / "data2")
    params["datasets"]["crops"]["detect"] = {"backend": "precropped", "workers": 0}
    with pytest.raises(ValueError, match=r"datasets\.crops\.detect \(over the detect section\): detect\.workers"):
        prepare("crops", params, tmp_path / "data2")
    # the section's options belong to its backend: a dataset with its own backend starts from none
    params["detect"].update(backend="insightface", options={"pack": "antelopev2"})
    params["datasets"]["crops"]["detect"] = {"backend": "precropped"}
    assert prepare("crops", params, tmp_path / "data3")["detect"]["kept"] == 12
    params["datasets"]["crops"]["detect"] = {"backend": "precropped", "options": {"pack": "x"}}
    with pytest.raises(ValueError, match=r"datasets\.crops\.detect .*'precropped' takes no option 'pack'"):
        prepare("crops", params, tmp_path / "data4")
