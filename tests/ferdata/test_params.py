"""Bad parameter values fail when the section is read, naming every bad key and what it must be,
instead of crashing inside a stage (a zero batch size divided by zero) or running on silently
(zero epochs trained nothing and wrote no best.pt)."""
from __future__ import annotations

import re
import shutil

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from ferdata.params import dataset_specs, load_params, read_yaml, section
from ferdata.stages.align import AlignParams
from ferdata.stages.derive import DeriveParams
from ferdata.stages.detect import DetectParams
from ferdata.stages.shard import ShardParams
from fermodels.evaluate import EvalParams
from fermodels.trainparams import train_section
from tests.fermodels.helpers import REPO, make_params

PARAMS = load_params(REPO / "params.yaml")
SECTIONS = {"detect": DetectParams, "align": AlignParams, "derive": DeriveParams, "shard": ShardParams}


def read(name: str, **changes):
    return section(SECTIONS[name], {**PARAMS[name], **changes}, name)


def read_evaluate(**changes) -> EvalParams:
    values = {k: v for k, v in PARAMS["evaluate"].items() if k != "dataset"}    # the select stage's key
    return section(EvalParams, {**values, **changes}, "evaluate")


def test_params_yaml_as_shipped_passes():
    for name in SECTIONS:
        read(name)
    read_evaluate()
    make_params()


def test_the_largest_crop_is_one_its_readers_decode():
    """Every reader of stored pictures refuses one over ``MAX_STORED_PIXELS`` (a decompression bomb
    in a shard): no align.size may make crops that large."""
    from ferdata.io import MAX_STORED_PIXELS

    assert read("align", size=4096).size ** 2 <= MAX_STORED_PIXELS


@pytest.mark.parametrize("name, changes, message", [
    ("detect", {"score_threshold": 1.5}, "detect.score_threshold must be null or in [0, 1], got 1.5"),
    ("detect", {"select": "biggest"}, "detect.select must be one of largest, central, got 'biggest'"),
    ("align", {"size": 100}, "align.size must be a multiple of 112 or 128"),
    ("align", {"size": 4480}, "align.size must be a multiple of 112 or 128 (the ArcFace template's scales) up to 4096"),
    ("align", {"jpeg_quality": 0, "workers": 0},
     "align.jpeg_quality must be in [1, 100], got 0; align.workers must be >= 1, got 0"),
    ("derive", {"heatmap_sigma": 0}, "derive.heatmap_sigma must be > 0, got 0"),
    ("shard", {"maxcount": 0}, "shard.maxcount must be >= 1, got 0"),
    ("shard", {"folds": 3, "fold": 5}, "shard.fold must be in 0..2 (shard.folds is 3), got 5"),
    ("shard", {"folds": 2}, "shard.folds must be 0 (off) or >= 3"),
    ("shard", {"folds": 0, "fold": 7}, "shard.fold 7 needs shard.folds"),
    ("shard", {"val_fraction": 0.6, "test_fraction": 0.5}, "shard.val_fraction + shard.test_fraction must be below 1"),
    # a value of the wrong type for its field, named before any stage runs (were tracebacks, or ran on)
    ("shard", {"seed": "abc"}, "shard.seed must be a whole number, got 'abc'"),
    ("shard", {"maxcount": 2.5}, "shard.maxcount must be a whole number, got 2.5"),
    ("detect", {"workers": 1.5}, "detect.workers must be a whole number, got 1.5"),
    ("detect", {"allow_download": "no"}, "detect.allow_download must be true or false, got 'no'"),
    ("detect", {"cache_dir": None}, "detect.cache_dir must be a folder's path"),
    ("detect", {"cache_dir": ""}, "detect.cache_dir must be a folder's path"),       # the cache went into the repo
    ("detect", {"model_dir": 5}, "detect.model_dir must be null or a folder's path (not empty), got 5"),
    ("detect", {"model_dir": " "}, "detect.model_dir must be null or a folder's path"),
    ("align", {"padding": "0.1"}, "align.padding must be in [0, 4.0], got '0.1'"),
    ("align", {"padding": 1e10}, "align.padding must be in [0, 4.0], got 10000000000.0"),   # crashed OpenCV
    ("derive", {"heatmap_size": 4000}, "derive.heatmap_size must be in [1, 256], got 4000"),   # 4 GiB a face
    ("align", {"cross_split_copies": "drop"}, "align.cross_split_copies must be one of keep, drop_train, got 'drop'"),
    ("derive", {"chunk_size": True}, "derive.chunk_size must be >= 1, got True"),
])
def test_a_bad_stage_value_is_refused_by_name(name, changes, message):
    with pytest.raises(ValueError) as e:
        read(name, **changes)
    assert message in str(e.value)


def test_a_bad_evaluate_value_is_refused_by_name():
    with pytest.raises(ValueError, match=r"evaluate.batch_size must be >= 1, got 0"):
        read_evaluate(batch_size=0)


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "train.batch_size must be >= 1, got 0"),           # was ZeroDivisionError
    ({"epochs": 0}, "train.epochs must be >= 1, got 0"),                   # was a run with no best.pt
    ({"schedule": "step", "step_size": 0}, "train.step_size must be >= 1"),  # was ZeroDivisionError
    ({"num_classes": 5}, "train.num_classes must be one of 7, 8, got 5"),
    ({"optimizer": "lion"}, "train.optimizer must be one of adam, adamw, sgd"),
    ({"warmup_epochs": -1, "workers": -2}, "train.warmup_epochs must be >= 0, got -1; train.workers must be >= 0"),
    ({"lr": "1e-3"}, "train.lr must be > 0, got '1e-3' (YAML read it as text: write it without quotes)"),
    ({"epochs": True}, "train.epochs must be >= 1, got True"),
    ({"seed": 1.5, "amp": "yes"}, "train.seed must be a whole number, got 1.5; train.amp must be true or false"),
    ({"label_smoothing": 1.0}, "train.label_smoothing must be in [0, 1), got 1.0"),   # a uniform target
    ({"label_smoothing": -0.1}, "train.label_smoothing must be in [0, 1), got -0.1"),
    ({"momentum": 1.0}, "train.momentum must be in [0, 1), got 1.0"),     # a velocity that never decays
    ({"momentum": 1.5}, "train.momentum must be in [0, 1), got 1.5"),
    ({"streams": 0}, "train.streams must be >= 1, got 0"),
    ({"datasets": "tiny"}, "train.datasets must be a non-empty list"),      # "tiny": t, i, n, y
    ({"datasets": [["tiny"], ["tiny"]]}, "train.datasets must be a non-empty list of prepared dataset names, "
                                         "got [['tiny'], ['tiny']]"),     # was: unhashable type: 'list'
    ({"datasets": [None]}, "train.datasets must be a non-empty list of prepared dataset names, got [None]"),
    ({"datasets": {"tiny": 1}}, "train.datasets must be a non-empty list of prepared dataset names, got {"),
    ({"warmup_epochs": 3, "epochs": 2}, "train.warmup_epochs 3 is more than train.epochs 2"),
    ({"lr": float("inf")}, "train.lr must be > 0, got inf"),                   # trained to NaN after preprocessing
    ({"weight_decay": float("nan")}, "train.weight_decay must be >= 0, got nan"),
    ({"seed": 2**64}, "train.seed must be in [0, 18446744073709551615], got 18446744073709551616"),   # torch's overflow
    ({"schedule": "step", "gamma": 10}, "train.gamma must be in (0, 1] (step and exponential multiply the learning "
                                        "rate by it: above 1 it grows), got 10"),     # was an lr 10x larger each step
])
def test_a_bad_train_value_is_refused_by_name(changes, message):
    with pytest.raises(ValueError) as e:
        make_params(**changes)
    assert message in str(e.value)


@pytest.mark.parametrize("model, kwargs, says", [
    ("pcda", {"h_norm": "tanh"}, "h_norm must be one of"),
    ("pcnn", {"regions": "landmark"}, "regions must be"),
    ("convcut", {"cut_stage": 4}, "cut_stage must be 2 or 3, got 4"),
    ("pcda", {"heads": 7}, "dim 768 is not divisible by heads 7"),
    ("pcda", {"depth": 2.0}, "'float' object cannot be interpreted as an integer"),    # was a TypeError traceback
])
def test_a_bad_model_keyword_value_is_refused_with_the_params(model, kwargs, says):
    """A model keyword's value was first judged when the train stage built the model, after detect,
    align, derive and shard had run; the params check (every stage's first step) now builds it on
    torch's meta device (no memory, no weight file read)."""
    with pytest.raises(ValueError, match=rf"^train.model_kwargs: model '{model}' cannot be built with .*"
                                         rf"{re.escape(says)}"):
        make_params(model=model, model_kwargs=kwargs)


@pytest.mark.parametrize("model, kwargs", [
    ("cmnet", {"share_trunk": False, "pretrained": "/nowhere/resnet18_msceleb.pth"}),
    ("pcda", {"dim": 512, "mlp_ratio": 2.0, "landmark_checkpoint": "/nowhere/mfn.pth",
              "pretrained": "/nowhere/ir50.pth"}),
    ("convcut", {"cut_stage": 2}),
    ("pcnn", {"regions": "fixed"}),
])
def test_the_documented_model_keywords_pass_the_check_without_their_weight_files(model, kwargs):
    assert make_params(model=model, model_kwargs=kwargs).model_kwargs == kwargs


def test_a_warm_up_as_long_as_the_run_is_allowed():
    assert make_params(warmup_epochs=2, epochs=2).warmup_epochs == 2


def test_prepare_checks_every_stage_before_the_first_runs(tmp_path, monkeypatch):
    """A bad shard value fails before detection starts (on AffectNet: hours earlier)."""
    import ferdata.prepare as prep

    monkeypatch.setattr(prep, "run_detect", lambda *a, **k: pytest.fail("detect ran with a bad shard section"))
    params = {**PARAMS, "shard": {**PARAMS["shard"], "folds": 3, "fold": 3}}
    with pytest.raises(ValueError, match="shard.fold must be in 0..2"):
        prep.prepare("sample", params, tmp_path / "data")
    without = {k: v for k, v in PARAMS.items() if k != "derive"}
    with pytest.raises(KeyError, match="params.yaml has no 'derive' section"):
        prep.prepare("sample", without, tmp_path / "data")


def test_a_params_file_that_is_not_yaml_is_named(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("detect: [\n  backend: embedded\n")
    with pytest.raises(ValueError, match=f"{bad} is not valid YAML"):
        load_params(bad)
    bad.write_bytes(b"\xff\xd8\xff\xe0 a JPEG given as --params")       # named (was a bare codec error)
    with pytest.raises(ValueError, match=f"{bad} is not a YAML text file"):
        load_params(bad)
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder: give the parameters file"):
        load_params(tmp_path)


def test_a_params_file_from_another_version_is_told_what_to_add():
    old = {k: v for k, v in PARAMS["detect"].items() if k != "options"}
    with pytest.raises(ValueError, match=r"missing keys \['options'\] \(new settings: copy them with their "
                                         r"defaults from the project's params.yaml, section detect\)"):
        section(DetectParams, old, "detect")
    with pytest.raises(ValueError, match=r"unknown keys \['treshold'\] \(misspelt"):
        section(DetectParams, {**PARAMS["detect"], "treshold": 1}, "detect")


def test_prepare_with_a_root_laid_out_otherwise_writes_nothing(tmp_path):
    """The layout error comes before any output folder is made (data/<name>/ was left behind)."""
    from ferdata.datasets import DatasetLayoutError
    from ferdata.prepare import prepare

    with pytest.raises(DatasetLayoutError, match="does not exist"):
        prepare("rafdb", PARAMS, tmp_path / "data", root=tmp_path / "missing")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("entry, words", [({"root": 5}, "reader and root must be text"),
                                          ({"options": [1]}, "options a mapping")])
def test_a_dataset_entry_of_the_wrong_kind_is_named(entry, words):
    """root: 5 or options: [1] gave TypeError tracebacks in the reader."""
    from ferdata.datasets import dataset_spec

    params = {"datasets": {"x": {"reader": "affectnet", "root": "raw/x", "options": {}, **entry}}}
    with pytest.raises(ValueError, match=f"params.yaml datasets.x: .*{words}"):
        dataset_spec(params, "x")


@pytest.mark.parametrize("datasets", [["sample"], "sample"], ids=["list", "text"])
def test_a_datasets_section_of_the_wrong_kind_is_an_error_line(tmp_path, datasets):
    """`datasets: [sample]` (written like train.datasets) gave `ferdata detect` and every pipeline stage,
    so `dvc repro`, a TypeError traceback."""
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "datasets": datasets}))
    says = "params.yaml datasets must map each dataset's name to its reader, root and options"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    for command in (["-m", "ferdata.cli", "detect", "sample", "--part", "1/2"],
                    ["-m", "pipeline.select", "data", "runs/select"]):
        run = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-600:]
        assert f"error: {says}" in run.stderr and "the datasets to train on are train.datasets" in run.stderr


@pytest.mark.parametrize("drop, says", [("evaluate", "params.yaml has no 'evaluate' section"),
                                         ("evaluate.split", "params.yaml has no evaluate.split"),
                                         ("train.datasets", "params.yaml has no train.datasets")])
def test_the_select_stage_names_a_missing_section_or_value(tmp_path, drop, says):
    """select reads params["evaluate"]["split"] before the stages after it check every section: a
    missing one was a KeyError traceback since bare KeyErrors count as bugs."""
    import subprocess
    import sys

    import yaml

    values = {**PARAMS, "train": dict(PARAMS["train"]), "evaluate": dict(PARAMS["evaluate"])}
    section, _, key = drop.partition(".")
    values.pop(section) if not key else values[section].pop(key)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    run = subprocess.run([sys.executable, "-m", "pipeline.select", "data", "runs/select"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1 and "Traceback" not in run.stderr and f"error: {says}" in run.stderr, run.stderr[-500:]


def test_command_line_values_are_yaml_and_a_colon_without_a_space_is_named():
    """`--option mapping={happy:Joyful}` read as the one key 'happy:joyful' (YAML needs a space after
    the colon), and the reader's error spoke of a class folder instead."""
    from ferdata.params import parse_assignments

    assert parse_assignments(["frames=3", "exclude_classes=[Contempt]", "mapping={happy: Happy}"]) == {
        "frames": 3, "exclude_classes": ["Contempt"], "mapping": {"happy": "Happy"}}
    with pytest.raises(ValueError, match=r"one key 'a:b'; write a space after each colon"):
        parse_assignments(["mapping={happy:Joyful}"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_assignments(["frames"])


def test_an_empty_datasets_section_is_no_datasets():
    assert dataset_specs({"datasets": None}) == {} and dataset_specs({}) == {}


@pytest.mark.parametrize("name", ["tiny.v2", "my set", "raf/db", 5, "", "-h", "--help", "-x"])
def test_a_dataset_name_dvc_yaml_cannot_carry_is_refused(name):
    """dvc.yaml's foreach stages take a dot for a params path (`Parameters 'datasets.tiny.v2' are missing`)
    and a space for another argument: `ferdata prepare` made such a dataset, `dvc repro` failed on it. A
    leading - is an option: a dataset named -h made each stage print its help and "succeed"."""
    spec = {"reader": "folder", "root": "raw/x"}
    with pytest.raises(ValueError, match="is not letters, digits, _ and - only"):
        dataset_specs({"datasets": {name: spec}})
    assert list(dataset_specs({"datasets": {"raf_db-2": spec, "sample": spec}})) == ["raf_db-2", "sample"]


@pytest.mark.parametrize("override, value", [("train.lr=0.00001", 1e-5), ("train.lr=3e-6", 3e-6),
                                             ("train.weight_decay=5e-5", 5e-5)])
def test_a_small_float_set_by_dvc_exp_run_S_is_the_number_dvc_wrote(tmp_path, override, value):
    """DVC writes ``lr: 1e-05`` (YAML 1.2, no dot), which PyYAML's 1.1 reads as text: the value DVC set
    and `dvc exp show` lists as a number was refused ("YAML read it as text")."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", [override])          # what `dvc exp run -S` does to the file
    params = load_params(tmp_path / "params.yaml")
    key = override.split("=")[0].split(".")[1]
    assert getattr(train_section(params, announce=False), key) == value


@pytest.mark.parametrize("text", ["017", "09", "1.0e1", "2.5e-3", "1:30", "0o17", "0x1F", "0b101", "1e-05", "1e5",
                                  "-2E+3", ".5", "3.", "1_000", "+7", ".inf", "-.inf", "null", "~", "1e", "'1e-3'",
                                  "2026-12-06"])
def test_a_value_is_read_as_dvc_reads_it(text):
    """DVC reads params.yaml as YAML 1.2 (what `dvc exp show` and dvc.lock hold); PyYAML's 1.1 read
    `seed: 017` as 15 (octal) and `1:30` as 90 (base 60), silently, and `1.0e1` as text."""
    from dvc.utils.serialize._yaml import parse_yaml

    ours, dvcs = read_yaml(f"x: {text}")["x"], parse_yaml(f"x: {text}", "params.yaml")["x"]
    assert type(ours) is type(dvcs) and ours == dvcs, (ours, dvcs)


def test_yaml_words_and_quoted_numbers_read_as_before(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 1e-05\nb: '1e-05'\nc: no\nd: 12\ne: 1.5e-3\nf: 1e5\ng: -2E+3\nh: 1e\n")
    assert load_params(tmp_path / "p.yaml") == {"a": 1e-05, "b": "1e-05", "c": False, "d": 12, "e": 1.5e-3,
                                                "f": 1e5, "g": -2e3, "h": "1e"}


def test_a_key_given_twice_is_refused_as_dvc_refuses_it(tmp_path):
    """PyYAML kept the last value silently (`lr` set twice trained with the second) where DVC refuses
    the file; keys a merge (`<<: *base`) brings in may still be set again."""
    text = (REPO / "params.yaml").read_text().replace("  lr: 0.002", "  lr: 0.002\n  lr: 0.5", 1)
    assert text.count("  lr: ") == 2
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValueError, match="'lr' twice"):
        load_params(tmp_path / "params.yaml")
    assert read_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


# Merge sources that PyYAML flattens (as another mapping's `<<`) before building them: their merged-in
# keys were taken for keys written twice by hand.
NESTED = """\
common: &common
  lr: 0.1
  epochs: 2
defaults:
  train: &train
    <<: *common
    lr: 1.0
experiment:
  <<: *train
"""

INLINE = """\
base: &base {x: 1, y: 2}
a:
  <<: &mid
    <<: *base
    x: 2
b: *mid
"""


def test_a_nested_merge_source_that_sets_a_merged_key_again_is_read_as_yaml_means_it():
    assert read_yaml(NESTED) == yaml.safe_load(NESTED)
    assert read_yaml(NESTED)["experiment"] == {"lr": 1.0, "epochs": 2}


def test_an_inline_merge_source_used_again_by_alias_is_read():
    assert read_yaml(INLINE) == yaml.safe_load(INLINE)


def test_a_key_given_twice_is_still_refused_where_merges_are_about():
    with pytest.raises(yaml.YAMLError, match="'lr' twice"):
        read_yaml(NESTED.replace("    lr: 1.0\n", "    lr: 1.0\n    lr: 2.0\n"))
    with pytest.raises(yaml.YAMLError, match="'x' twice"):
        read_yaml("b: &b {x: 1}\nc:\n  <<: *b\n  x: 3\n  x: 4\n")
    assert read_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}
