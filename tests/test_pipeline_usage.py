"""Every stage script, run by hand with the wrong arguments or --help, prints its usage line."""
from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (REPO / "pipeline").glob("[a-z]*.py"))


def usage_in_docstring(stage: str) -> str:
    """The ``Usage: python -m pipeline.<stage> ...`` its docstring states."""
    doc = (REPO / "pipeline" / f"{stage}.py").read_text().split('"""')[1]
    m = re.search(r"Usage: (python -m pipeline\.\w+(?: [A-Z_]+)*)", doc)
    assert m is not None, f"pipeline/{stage}.py: no Usage line in its docstring"
    return m.group(1)


def run_stage(stage: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [f"pipeline/{stage}.py", *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(f"pipeline.{stage}", run_name="__main__", alter_sys=True)
    return stop.value.code


def test_every_stage_is_covered():
    assert {"train", "select", "evaluate", "detect", "align", "derive", "shard", "sample"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("argv", [[], ["a"] * 5], ids=["none", "too-many"])
def test_wrong_number_of_arguments_prints_usage_and_exits_2(stage, argv, monkeypatch, capsys):
    assert run_stage(stage, argv, monkeypatch) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"usage: {usage_in_docstring(stage)}"
    assert lines[-1].startswith("error: expected ") and f"got {len(argv)}" in lines[-1]
    per_dataset = stage in ("detect", "align", "derive", "shard")     # dvc.yaml runs these with --dvc-stage
    assert len(lines) == 2 + per_dataset
    assert not per_dataset or lines[1].endswith(f" --dvc-stage {stage}@DATASET  (as dvc.yaml runs it; the paths "
                                                "data/DATASET/...)")
    assert "Traceback" not in err and "unpack" not in err


def test_train_run_by_hand_names_its_arguments(monkeypatch, capsys):
    """The README's torchrun line runs ``-m pipeline.train`` by hand."""
    assert run_stage("train", ["runs/select/train.json"], monkeypatch) == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: python -m pipeline.train SELECTION CKPT_DIR LIVE_DIR",
        "error: expected 3 argument(s) (SELECTION CKPT_DIR LIVE_DIR), got 1",
    ]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(stage, flag, monkeypatch, capsys):
    assert run_stage(stage, [flag], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"usage: {usage_in_docstring(stage)}"
    assert f"Stage `{stage}" in out and err == ""


def test_help_into_a_closed_pipe_and_a_missing_params_file_are_quiet_or_one_line(tmp_path):
    """`python -m pipeline.<stage> --help | head -1` (the reader gone) ended on a BrokenPipeError
    traceback; run outside the project, a stage said to "pass --params PATH", which it has not."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("FER_TRACEBACK", "PYTHONUNBUFFERED"):         # as a shell runs it: stdout to a pipe buffered
        env.pop(name, None)
    read, write = os.pipe()
    os.close(read)                                              # the reader left before the help was written
    with os.fdopen(write, "wb") as gone:
        run = subprocess.run([sys.executable, "-m", "pipeline.detect", "--help"], stdout=gone, stderr=subprocess.PIPE,
                             cwd=tmp_path, env=env, text=True)
    assert run.returncode == 1 and run.stderr == "", run.stderr
    run = subprocess.run([sys.executable, "-m", "pipeline.detect", "sample", "out"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: params.yaml not found in {tmp_path}: a stage script runs in the project "
                                 "folder"), run.stderr
    assert "--params" not in run.stderr


@pytest.mark.parametrize("section, key, value, says", [
    ("train", "bogus", 1, "params section 'train': unknown keys ['bogus']"),
    ("train", "epochs", 0, "train.epochs"),
    ("evaluate", "dataset", 7, "evaluate.dataset must be null"),
    ("evaluate", "dataset", "", "evaluate.dataset must be null"),
    ("evaluate", "seed", -1, "evaluate.seed"),
    ("detect", "det_size", "big", "detect.det_size"),
    ("train", "datasets", ["sampel"], "train.datasets (or its recipe's) names 'sampel', which is neither in"),
    ("evaluate", "dataset", "nosuch", "evaluate.dataset names 'nosuch', which is neither in params.yaml's"),
    ("train", "device", "gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("evaluate", "device", "gpu", "evaluate.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train", "model_kwargs", {"num_classes": 8}, "train.model_kwargs sets num_classes (8): set train.num_classes"),
    ("train", "model_kwargs", {"pretrained": 5}, "train.model_kwargs.pretrained must be a weight file's path or null"),
    ("train", "recipe", ["cmnet_rafdb"], "unknown training recipe ['cmnet_rafdb']; known: "),
    ("train", "model", "resnet81", "resnet18_heatmap_112 (train.model)"),
], ids=["train-key", "train-value", "evaluate-dataset", "evaluate-dataset-empty", "evaluate-value", "detect-value",
        "train-unknown-dataset", "evaluate-unknown-dataset", "train-device", "evaluate-device", "kwargs-num-classes",
        "kwargs-weights-number", "recipe-list", "model"])
def test_a_stage_refuses_a_bad_value_of_any_section_before_it_starts(tmp_path, section, key, value, says):
    """Each stage checked only its own section: a bad `train` value surfaced after every
    preprocessing stage had run (hours on AffectNet). Now the first stage to run names it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.align", "detect", "aligned"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: ") and says in run.stderr and "checked whole" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "aligned").exists()


@pytest.mark.parametrize("section, key, value, says", [
    ("train", "datasets", ["rafbd"], "train.datasets (or its recipe's) names 'rafbd', which is neither in"),
    ("evaluate", "dataset", "rafbd", "evaluate.dataset names 'rafbd', which is neither in params.yaml's"),
    ("train", "datasets", None, "datasets must be named as a list of prepared datasets' names"),
    ("train", "datasets", 5, "datasets must be named as a list of prepared datasets' names"),
], ids=["train", "evaluate", "train-null", "train-number"])
def test_select_names_a_misspelt_dataset(tmp_path, section, key, value, says):
    """With the datasets prepared, `select` runs first and skips the whole check: a misspelt name
    got 'data/rafbd/shards/train/_info.json not found: prepare the dataset first (`dvc repro
    shard@<name>`)', a stage that does not exist."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.select", "data", "select"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and run.stderr.startswith("error: ") and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "select").exists()


def test_a_training_error_reaches_torchruns_failure_summary(tmp_path):
    """torchrun's "Root Cause" showed only `error_file: <N/A>` and an exit code: the stage did not
    record its exception where torchrun reads it (TORCHELASTIC_ERROR_FILE)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHELASTIC_ERROR_FILE": str(tmp_path / "error.json")}
    run = subprocess.run([sys.executable, "-m", "pipeline.train", "missing.json", "ckpt", "live"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 1 and run.stderr.startswith("error: missing.json not found"), run.stderr
    recorded = json.loads((tmp_path / "error.json").read_text())
    assert "missing.json not found: run `dvc repro select`" in recorded["message"]["message"]


@pytest.mark.parametrize("section", ["train", "evaluate"])
def test_the_whole_check_takes_every_device_name_present_or_not(tmp_path, section):
    """Only the name is checked: preprocessing may run on another machine than training."""
    from pipeline._checks import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        check_params({**params, section: {**params[section], "device": good}}, tmp_path)


def test_the_whole_check_takes_datasets_prepared_outside_params_and_an_empty_sample_section(tmp_path):
    """`ferdata prepare NAME --root ...` prepares a dataset that params.yaml does not list: training
    on it must pass the check; `sample:` left empty (no bundled sample) is no error either."""
    from pipeline._checks import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["datasets"] = ["mine"]
    params["sample"] = None
    with pytest.raises(KeyError, match=r"names 'mine', which is neither .* nor prepared under .*mine/shards"):
        check_params(params, tmp_path)
    (tmp_path / "mine" / "shards").mkdir(parents=True)
    check_params(params, tmp_path)


def test_ranks_after_the_first_log_warnings_only():
    """Under torchrun every rank told the same progress (stream counts, the resume point, the
    recipe), once per GPU; rank 0 tells it, the others warn and fail."""
    import logging

    from pipeline._args import log_level

    assert log_level({}) == log_level({"RANK": "0"}) == logging.INFO
    assert log_level({"RANK": "1"}) == log_level({"RANK": "7"}) == logging.WARNING


def _with_dataset(**entry) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["second"] = {"reader": "affectnet", "root": "raw/AffectNet", "options": {}, **entry}
    return params


@pytest.mark.parametrize("entry, named", [({"options": {"protocl": "affectnet7"}}, "protocl"),
                                          ({"reader": "afectnet"}, "afectnet"),
                                          ({"options": {"root": "raw/elsewhere"}}, "'root'"),   # were TypeErrors
                                          ({"options": {1: "x"}}, "unknown option(s) 1")],
                         ids=["option", "reader", "option-root", "option-number"])
def test_the_whole_check_refuses_another_datasets_misspelt_reader_or_option(tmp_path, entry, named):
    """The check never built the datasets' readers: a misspelt reader or option of a second dataset
    passed it, and `dvc repro` detected every other dataset before that one's detect stage failed."""
    from ferdata.errors import is_user_error, message
    from pipeline._checks import check_params

    with pytest.raises((ValueError, KeyError)) as caught:
        check_params(_with_dataset(**entry), tmp_path)
    assert is_user_error(caught.value)
    assert named in message(caught.value) and "datasets.second" in message(caught.value)
    check_params(_with_dataset(root="/nonexistent/AffectNet", options={"protocol": "affectnet7"}), tmp_path)


@pytest.mark.parametrize("reader, options, named", [
    ("affectnet", {"protocol": "affectnet9"}, "protocol must be affectnet7 or affectnet8, got 'affectnet9'"),
    ("affectnet", {"automatic": "yes"}, "automatic must be true or false, got 'yes'"),
    ("affectnet", {"layout": "zip"}, "layout must be one of"),
    ("rafdb", {"images": "orig"}, "images must be auto, original or aligned, got 'orig'"),
    ("sfew", {"val_as": "valid"}, "val_as must be 'test' or 'val', got 'valid'"),
    ("ferplus", {"label_mode": "majorty"}, "label_mode must be one of"),
    ("ckplus", {"frames": 0}, "options.frames must be a whole number >= 1, got 0"),
    ("folder", {"subject": "S\\d+"}, "options.subject must be a regular expression")])
def test_the_whole_check_refuses_another_datasets_bad_option_value(tmp_path, reader, options, named):
    """A reader's option values were checked when its scan started: a second dataset's misspelt protocol
    passed the whole check, and `dvc repro` detected every dataset before it, then failed at its detect stage."""
    from ferdata.errors import is_user_error, message
    from pipeline._checks import check_params

    with pytest.raises(ValueError) as caught:
        check_params(_with_dataset(reader=reader, options=options), tmp_path)
    assert is_user_error(caught.value)
    assert named in message(caught.value) and "datasets.second" in message(caught.value)


@pytest.mark.parametrize("where, detect, named", [
    ("section", {"backend": "embeded"}, "embeded"),
    ("section", {"options": {"thread": 2}}, "thread"),
    ("section", {"options": {"threads": 0}}, "threads"),
    ("dataset", {"options": {"threads": 0}}, "threads"),
    ("dataset", {"backend": "embeded"}, "datasets.sample.detect.backend"),
    ("section", {"backend": "face_alignment", "options": {"detector": "embeded"}}, "detector must be one of"),
    ("section", {"backend": "insightface", "options": {"landmarks": "69"}}, "landmarks must be one of"),
    ("section", {"backend": "insightface", "options": {"pack": "buffalo_sc"}}, "has no 68-point landmark model")])
def test_the_whole_check_refuses_a_bad_face_backend_or_option(tmp_path, where, detect, named):
    """The detect section's own backend and options were checked only when a detect stage started (a
    dataset's override was checked, the section not; option values by neither)."""
    from ferdata.errors import is_user_error, message
    from pipeline._checks import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if where == "section":
        params["detect"].update(detect)
    else:
        params["datasets"]["sample"]["detect"] = detect
    with pytest.raises((ValueError, KeyError)) as caught:
        check_params(params, tmp_path)
    assert is_user_error(caught.value) and named in message(caught.value)


def test_the_whole_check_lets_auto_pass_on_options_one_candidate_refuses(tmp_path):
    from pipeline._checks import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"].update(backend="auto", options={"detector": "sfd", "pack": "antelopev2"})
    check_params(params, tmp_path)


def test_the_whole_check_says_when_a_pretrained_file_is_not_here(tmp_path, caplog):
    """A missing weight file passed the check (it need only be on the machine that trains) and the train
    stage stopped at its start, after hours of preprocessing, with nothing said before."""
    from pipeline._checks import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(model="resnet18_112", model_kwargs={"pretrained": str(tmp_path / "r18.pth")})
    with caplog.at_level("WARNING", logger="pipeline._checks"):
        check_params(params, tmp_path)
    assert f"train.model_kwargs.pretrained {tmp_path / 'r18.pth'} is not on this machine" in caplog.text
    caplog.clear()
    (tmp_path / "r18.pth").write_bytes(b"weights")
    with caplog.at_level("WARNING", logger="pipeline._checks"):
        check_params(params, tmp_path)
    assert "is not on this machine" not in caplog.text


def test_a_worker_that_imports_a_stage_script_runs_no_stage():
    """A spawn or forkserver worker (macOS; Python 3.14's default on Linux, which DataLoader workers
    take) imports the script its parent runs, as ``__mp_main__`` with the worker's own argv. The
    scripts did their work at import: every worker ran ``setup()`` again and died, so detect, align,
    derive (with a misleading "the worker crashes whatever its input") and evaluate failed."""
    code = "\n".join(["import runpy, sys", "sys.argv = ['-c']"]
                     + [f"runpy.run_module('pipeline.{s}', run_name='__mp_main__', alter_sys=True)" for s in STAGES]
                     + ["print('imported every stage script')"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "imported every stage script" in proc.stdout, proc.stderr[-3000:]
