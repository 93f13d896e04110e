"""The `ferdata` command line: cheap to start (torch is imported only by the command that needs
it), every command, `predict` included, listed with its options, and bad input reported as one
line (ferdata/errors.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.errors import NamedKeyError, run_cli
from ferdata.faces import BACKENDS, MissingModelError
from ferdata.params import section_values

REPO = Path(__file__).resolve().parents[2]

COMMANDS = ("prepare", "detect", "cache", "datasets", "backends", "verify", "sample", "show", "predict")
PREDICT_OPTIONS = ("--model", "-m", "--out", "-o", "--annotate", "--backend", "--model-dir", "--batch-size",
                   "--every", "--device", "--flip-tta", "--allow-download")


def _heavy_modules_after(code: str) -> list[str]:
    """Which of torch/fermodels/OpenCV a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in ('torch', 'fermodels', 'cv2') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [m for m in proc.stdout.strip().splitlines()[-1].split(",") if m] if proc.stdout.strip() else []


def test_importing_the_cli_does_not_import_torch():
    assert _heavy_modules_after("import ferdata.cli") == []


def test_help_does_not_import_torch():
    code = ("from typer.testing import CliRunner\nfrom ferdata.cli import app\n"
            "res = CliRunner().invoke(app, ['--help'])\nassert res.exit_code == 0, res.output")
    assert _heavy_modules_after(code) == []


def test_fermodels_help_does_not_import_torch():
    """`fermodels --help` and `fermodels recipes` took seconds importing torch (through the
    package's registry names and the CLI module's imports); the commands that build a model import it."""
    code = ("from typer.testing import CliRunner\nfrom fermodels.cli import app\n"
            "for args in (['--help'], ['recipes'], ['crossval', '--help']):\n"
            "    res = CliRunner().invoke(app, args)\n    assert res.exit_code == 0, res.output")
    assert "torch" not in _heavy_modules_after(code)
    assert "torch" in _heavy_modules_after("from fermodels import create_model")
    assert "torch" not in _heavy_modules_after("import fermodels\nassert 'list_models' in dir(fermodels)")


def test_help_lists_every_command():
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert f" {name} " in res.output, name


@pytest.mark.parametrize("module", ["ferdata.cli", "fermodels.cli"])
def test_help_reflows_each_docstring_paragraph_to_the_terminal(module):
    """Typer's rich help kept the docstrings' source line breaks: in an 80-column terminal a
    paragraph broke mid-sentence. At 200 columns every paragraph now fits one output line, in each
    command's help and (its first) in the command list."""
    import importlib
    import inspect

    app = importlib.import_module(module).app
    commands = [(c.name or c.callback.__name__.replace("_", "-"), c.callback) for c in app.registered_commands]
    commands += [(f"{g.name} {c.name or c.callback.__name__}", c.callback)
                 for g in app.registered_groups for c in g.typer_instance.registered_commands]
    listing = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for name, callback in commands:
        paragraphs = [" ".join(p.split()) for p in inspect.getdoc(callback).split("\n\n")]
        if " " not in name:
            assert any(paragraphs[0] in line for line in listing.splitlines()), (name, listing)
        res = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200)
        assert res.exit_code == 0, res.output
        for paragraph in paragraphs:
            assert any(paragraph in line for line in res.output.splitlines()), (name, paragraph, res.output)


@pytest.mark.parametrize("module", ["ferdata.cli", "fermodels.cli"])
def test_help_in_80_columns_cuts_no_option_text(module):
    """Rich's help table gave an option's text a 16-character column in 80 columns (a terminal, or
    any output redirected to a file) and cut long words with an ellipsis: `predict --help` showed
    "(runs/train/ckp…" and "pack=antelopev2…". Every option's help is there whole, words in order."""
    import importlib

    from typer.main import get_command

    app = importlib.import_module(module).app
    todo, seen = [((), get_command(app))], 0            # typer's own click: its classes are not click's
    while todo:
        path, command = todo.pop()
        res = CliRunner().invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0 and "…" not in res.output, (path, res.output)
        text = " ".join(res.output.split())
        for param in command.params:
            if param.param_type_name == "option" and param.help:
                assert " ".join(param.help.split()) in text, (path, param.help, res.output)
                seen += 1
        todo += [((*path, name), sub) for name, sub in getattr(command, "commands", {}).items()]
    assert seen >= 5                                     # every command's options were read


def test_predict_help_keeps_its_options():
    res = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    words = res.output.replace(",", " ").split()                   # "-m, --model <path>"
    for option in PREDICT_OPTIONS:
        assert option in words, option


def test_predict_rejects_bad_counts_before_loading_a_model(tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    res = CliRunner().invoke(app, ["predict", str(image), "-m", str(tmp_path / "missing.pt"), "--every", "0"])
    assert res.exit_code == 2 and "--every" in res.output


def test_datasets_lists_every_reader_and_the_common_options():
    from ferdata.datasets import COMMON_OPTIONS, READERS

    res = CliRunner().invoke(app, ["datasets"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in READERS.names():
        assert any(line.startswith(f"{name} ") for line in res.output.splitlines()), name
    common = res.output.splitlines()[-1]
    assert all(option in common for option in COMMON_OPTIONS)
    assert "affectnet, ferplus and rafdb only" in common


def _ferdata(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferdata.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_preparing_the_sample_before_it_is_generated_says_how_to_make_it(tmp_path, monkeypatch):
    """The AffectNet reader said data/raw/sample "does not look like this dataset" (expected:
    Manually_Annotated_Images/ ...), which a new user cannot act on: the sample is generated."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    for args in (["prepare", "sample"], ["detect", "sample", "--part", "1/2"]):       # detect: on machine K
        res = CliRunner().invoke(app, args)
        assert isinstance(res.exception, FileNotFoundError), res.output
        assert str(res.exception) == ("data/raw/sample: the sample dataset is generated, not shipped: `ferdata "
                                      "sample data/raw/sample` makes it (`dvc repro` does both)")
        assert not (tmp_path / "data").exists()


def test_bad_input_is_one_line_without_a_traceback(tmp_path):
    """Run where no params.yaml is, then against an empty dataset folder: `error: ...` on stderr,
    status 1; --verbose and FER_TRACEBACK=1 add the traceback."""
    missing = _ferdata("prepare", "affectnet", "--root", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: params.yaml not found: run from the project folder"), missing.stderr
    layout = _ferdata("prepare", "sample", "--root", str(tmp_path), "--out", str(tmp_path / "out"), cwd=REPO)
    assert layout.returncode == 1 and "Traceback" not in layout.stderr
    assert "error: affectnet:" in layout.stderr and "Manually_Annotated_Images/" in layout.stderr, layout.stderr
    assert not (tmp_path / "out" / "sample" / "shards").exists()
    for args, env in ((("-v",), None), ((), {"FER_TRACEBACK": "1"})):
        shown = _ferdata("prepare", "affectnet", "--root", str(tmp_path), *args, cwd=tmp_path, env=env)
        assert shown.returncode == 1 and "Traceback" in shown.stderr and "params.yaml not found" in shown.stderr


def test_a_bug_keeps_its_traceback_and_names_are_unquoted(capsys):
    def bug():
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        run_cli(bug, argv=[])

    def unknown():
        raise NamedKeyError("dataset 'x' is not in params.yaml datasets")

    with pytest.raises(SystemExit) as done:
        run_cli(unknown, argv=[])
    assert done.value.code == 1
    assert capsys.readouterr().err.startswith("error: dataset 'x' is not in params.yaml datasets\n")


def test_a_bare_lookup_keyerror_is_a_bug_with_its_traceback(tmp_path):
    """``info["detect"]["options"]`` missing reached the user as "error: options": no file, no fix and
    no traceback to find it. A KeyError that holds only the missed key keeps its traceback, from the
    commands and from a stage script alike."""
    import subprocess
    import sys

    for key in ("options", "my dataset", "a key: with words"):       # a sentence-like key is still a lookup
        with pytest.raises(KeyError):
            run_cli(lambda: {}[key], argv=[])
        script = f"from ferdata.errors import install_excepthook\ninstall_excepthook()\n{{}}[{key!r}]\n"
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert run.returncode == 1 and "Traceback" in run.stderr and f"KeyError: {key!r}" in run.stderr


@pytest.mark.parametrize("imports", ["", "import torch._dynamo\n"])
@pytest.mark.parametrize("traceback", ["0", "1"])
def test_a_stage_script_stopped_by_ctrl_c_says_so_and_ends_as_interrupted(imports, traceback):
    """Every stage from detect on imports torch._dynamo (the params check's model registry): its exit
    handler made the status of a Ctrl-C 1, a failure to DVC and to `set -e` scripts."""
    import signal
    import subprocess
    import sys

    script = f"from ferdata.errors import install_excepthook\ninstall_excepthook()\n{imports}raise KeyboardInterrupt\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "FER_TRACEBACK": traceback})
    assert run.returncode == -signal.SIGINT, run.stderr                     # a shell's 130
    assert (run.stderr == "interrupted\n") if traceback == "0" else ("Traceback" in run.stderr)


def test_a_command_stopped_by_ctrl_c_says_so(monkeypatch, capsys):
    """typer ends a Ctrl-C with status 130 and not a word; the stage scripts say "interrupted"."""
    import typer

    from ferdata.errors import run_cli

    command = typer.Typer()

    @command.command()
    def work(stop: bool = False) -> None:
        if stop:
            raise KeyboardInterrupt
    for argv, code, said in ((["--stop"], 130, "interrupted\n"), ([], 0, "")):
        monkeypatch.setattr(sys, "argv", ["ferdata", *argv])
        with pytest.raises(SystemExit) as end:
            run_cli(command)
        assert end.value.code == code and capsys.readouterr().err == said


def test_derived_samples_out_of_step_with_aligned_ones_are_one_line(tmp_path, capsys):
    """An aligned folder re-made without re-running derive is the user's to fix (re-run derive):
    one line naming the fix, not a traceback."""
    from ferdata.layout import ALIGNED, DERIVED, REPORT
    from ferdata.report import StageReport
    from ferdata.stages.shard import ShardParams, run_shard
    from ferdata.tario import TarShardWriter

    for name, prefix, keys in (("aligned", ALIGNED, ("a", "b")), ("derived", DERIVED, ("a",))):
        (tmp_path / name).mkdir()
        with TarShardWriter(tmp_path / name, prefix, 10) as w:
            for key in keys:
                w.write(key, {"json": b"{}"})
        StageReport({"aligned": "align", "derived": "derive"}[name]).write(tmp_path / name / REPORT)
    params = ShardParams(seed=0, val_fraction=0.1, test_fraction=0.1, split_by="key", folds=0, fold=0,
                         maxcount=10)
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: run_shard(tmp_path / "aligned", tmp_path / "derived", params, tmp_path / "shards"),
                argv=[])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: aligned and derived samples differ (e.g. ['b']); re-run derive")
    assert "Traceback" not in err and "FER_TRACEBACK=1" in err


SHARD = dict(seed=0, val_fraction=0.1, test_fraction=0.1, split_by="key", folds=0, fold=0, maxcount=10)


def test_a_dataset_whose_every_record_was_dropped_is_an_error_at_shard_not_empty_shards(tmp_path):
    from ferdata.layout import ALIGNED, DERIVED, REPORT
    from ferdata.report import StageReport
    from ferdata.stages.shard import ShardParams, run_shard
    from ferdata.tario import TarShardWriter

    for name, prefix in (("aligned", ALIGNED), ("derived", DERIVED)):
        (tmp_path / name).mkdir()
        with TarShardWriter(tmp_path / name, prefix, 10):
            pass
    with pytest.raises(ValueError, match=r"derived is no align stage's output \(its report.json is missing or "
                                         r"unreadable\): pass data/<name>/aligned, then data/<name>/derived"):
        run_shard(tmp_path / "derived", tmp_path / "aligned", ShardParams(**SHARD), tmp_path / "shards")  # swapped
    StageReport("align").write(tmp_path / "aligned" / REPORT)                 # the align stage ran, kept nothing
    StageReport("derive").write(tmp_path / "derived" / REPORT)
    with pytest.raises(ValueError, match=r"derived is no align stage's output \(its report.json says 'derive'\): "
                                         r"pass data/<name>/aligned, then data/<name>/derived"):
        run_shard(tmp_path / "derived", tmp_path / "aligned", ShardParams(**SHARD), tmp_path / "shards")  # swapped
    with pytest.raises(ValueError, match="no samples to shard in .*every record was dropped before this stage"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", ShardParams(**SHARD), tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("lost", ["jpg", "json"])
def test_an_aligned_sample_without_its_image_or_record_is_named_at_shard(tmp_path, lost):
    """A bare KeyError 'json' before (`error: json`), or a sample without its image sharded anyway."""
    from ferdata.layout import ALIGNED, DERIVED, REPORT
    from ferdata.report import StageReport
    from ferdata.stages.shard import ShardParams, run_shard
    from ferdata.tario import TarShardWriter

    members = {"jpg": b"\xff\xd8\xff", "json": b"{}"}
    for name, stage, prefix, fields in (("aligned", "align", ALIGNED, {e: b for e, b in members.items() if e != lost}),
                                        ("derived", "derive", DERIVED, {"heatmap.png": b"png"})):
        (tmp_path / name).mkdir()
        with TarShardWriter(tmp_path / name, prefix, 10) as writer:
            writer.write("k", fields)
        StageReport(stage).write(tmp_path / name / REPORT)
    with pytest.raises(ValueError, match=f"aligned-000000.tar: sample 'k' has no {lost}: the align stage's output "
                                         "is damaged; run the align stage again"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", ShardParams(**SHARD), tmp_path / "shards")


def test_console_scripts_run_under_the_error_policy():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ferdata": "ferdata.cli:main", "fermodels": "fermodels.cli:main"}


def test_stage_scripts_report_bad_input_in_one_line(tmp_path):
    """A DVC stage script (pipeline/) ending on bad input: the same one line and status 1."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", "runs/select/train.json", "ckpt", "live"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: runs/select/train.json not found: run `dvc repro select`" in proc.stderr


def test_detect_parts_on_two_machines_then_merge(tmp_path, photo_paths):
    """`ferdata detect --part K/N` on each "machine" (its own cache), `ferdata cache merge` on one."""
    import cv2
    import yaml

    root = tmp_path / "faces"
    for i, src in enumerate(sorted(photo_paths.values())):
        image = cv2.imread(str(src))
        for label, pixels in (("happy", image), ("neutral", image[:, ::-1])):   # 6 distinct pictures
            (root / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / label / f"{i}.jpg"), pixels)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    runner, lines = CliRunner(), []
    for k in (1, 2):
        params["detect"]["cache_dir"] = str(tmp_path / f"machine{k}")
        (tmp_path / f"p{k}.yaml").write_text(yaml.safe_dump(params))
        res = runner.invoke(app, ["detect", "folder", "--root", str(root), "--part", f"{k}/2",
                                  "--params", str(tmp_path / f"p{k}.yaml")])
        assert res.exit_code == 0, res.output
        lines.append(res.output.splitlines()[0])
    detected = [int(line.split("; ")[1].split()[0]) for line in lines]
    assert sum(detected) == 6, lines                  # each record detected on exactly one machine
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "machine1"), str(tmp_path / "machine2"),
                              "--into", str(tmp_path / "main")])
    assert res.exit_code == 0, res.output
    assert f"{detected[0]} added" in res.output and "detections.sqlite: 6 detections" in res.output, res.output
    bad = runner.invoke(app, ["detect", "folder", "--root", str(root), "--part", "3/2"])
    assert bad.exit_code == 2 and "--part" in bad.output and "1 <= K <= N" in bad.output


def test_cache_merge_dataset_merges_into_that_datasets_own_cache(tmp_path):
    """A dataset with its own ``detect.cache_dir`` (datasets.<name>.detect) fills that cache in
    `ferdata detect --part`: `cache merge --dataset <name>` merges into it, not the section's."""
    import yaml

    from ferdata.cache import DetectionCache

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = str(tmp_path / "section")
    params["datasets"] = {"mine": {"reader": "folder", "root": str(tmp_path / "faces"), "options": {},
                                   "detect": {"cache_dir": str(tmp_path / "own")}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with DetectionCache(tmp_path / "other"):
        pass
    runner, args = CliRunner(), ["cache", "merge", str(tmp_path / "other"), "--params", str(tmp_path / "p.yaml")]
    res = runner.invoke(app, [*args, "--dataset", "mine"])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'own' / 'detections.sqlite'}: 0 detections" in res.output, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and f"{tmp_path / 'section' / 'detections.sqlite'}: 0" in res.output, res.output
    res = runner.invoke(app, [*args, "--dataset", "yours"])
    assert isinstance(res.exception, KeyError) and "'yours' is not in params.yaml datasets (known: mine)" in str(
        res.exception)
    res = runner.invoke(app, [*args, "--dataset", "mine", "--into", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not both" in res.output


@pytest.mark.parametrize("target, says", [("here.txt", "here.txt exists and is a file: move it away"),
                                          ("here.txt/inner", "here.txt is a file, but a folder is needed there "
                                                             "(to hold here.txt/inner)")])
def test_an_output_folder_that_is_a_file_is_named_in_plain_words(tmp_path, target, says):
    """`cache merge --into FILE` (and any output folder the OS cannot make because a file is in the
    way): the file and the fix, not "[Errno 17] File exists"."""
    from ferdata.cache import DetectionCache

    (tmp_path / "here.txt").write_text("keep me")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with DetectionCache(tmp_path / "elsewhere"):
        pass
    proc = _ferdata("cache", "merge", str(tmp_path / "elsewhere"), "--into", target, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Errno" not in proc.stderr
    assert proc.stderr.startswith(f"error: {says}"), proc.stderr
    assert (tmp_path / "here.txt").read_text() == "keep me"


def test_cache_merge_checks_its_sources_first_and_takes_the_target_as_its_file(tmp_path):
    """A missing source leaves no new empty cache behind; --into naming the target's detections.sqlite
    (as sources may) merges into it instead of calling the user's cache a file in the way."""
    from ferdata.cache import DetectionCache

    with DetectionCache(tmp_path / "w1"), DetectionCache(tmp_path / "t1"):
        pass
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "w1"), str(tmp_path / "nope"),
                              "--into", str(tmp_path / "brandnew")])
    assert isinstance(res.exception, FileNotFoundError) and "nope: no detection cache there" in str(res.exception)
    assert not (tmp_path / "brandnew").exists()
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "w1"), "--into",
                              str(tmp_path / "t1" / "detections.sqlite")])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 't1' / 'detections.sqlite'}: 0 detections" in res.output
    (tmp_path / "afile").write_bytes(b"")                      # a source that is no cache: refused first too
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "afile"), "--into", str(tmp_path / "c1")])
    assert isinstance(res.exception, ValueError) and "afile is not a ferdata detection cache" in str(res.exception)
    assert not (tmp_path / "c1").exists()
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "w1"), "--into",        # a new cache named by its
                              str(tmp_path / "c2" / "detections.sqlite")])               # file: no folder of that name
    assert res.exit_code == 0 and (tmp_path / "c2" / "detections.sqlite").is_file(), res.output


def test_sample_into_a_file_is_named_in_plain_words(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = _ferdata("sample", str(tmp_path / "afile"), cwd=tmp_path)
    assert proc.returncode == 1 and "Errno" not in proc.stderr, proc.stderr
    assert f"error: {tmp_path / 'afile'} is a file, but a folder is needed there: " in proc.stderr, proc.stderr
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("atomic", [False, True])
def test_an_output_file_that_is_a_folder_is_named_in_plain_words(tmp_path, capsys, atomic):
    """Written in place or atomically (a temp file renamed onto the folder: the OS names the temp)."""
    from ferdata.atomic import atomic_write_text

    (tmp_path / "out.csv").mkdir()

    def write():
        if atomic:
            atomic_write_text(tmp_path / "out.csv", "rows")
        else:
            (tmp_path / "out.csv").write_text("rows")

    with pytest.raises(SystemExit):
        run_cli(write, argv=[])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'out.csv'} is a folder, but a file must be written there"), err


def test_other_os_errors_keep_their_own_message(capsys):
    def exclusive():
        raise FileExistsError(17, "File exists", "/no/such/place")     # nothing on disk explains it

    with pytest.raises(SystemExit):
        run_cli(exclusive, argv=[])
    assert "[Errno 17] File exists: '/no/such/place'" in capsys.readouterr().err


@pytest.mark.parametrize("command,flag,example", [
    (["prepare", "sample"], "--option", "exclude_classes=[Contempt]"),
    (["predict", "x.jpg", "-m", "m.pt"], "--backend-option", "threads=2")])
def test_a_malformed_assignment_is_refused_with_an_example_that_option_takes(command, flag, example):
    res = CliRunner().invoke(app, [*command, flag, "threads"])
    text = " ".join(res.output.replace("│", " ").split())                     # rich's box, unwrapped
    assert res.exit_code == 2 and f"expected KEY=VALUE, e.g. {example}" in text


def test_prepare_takes_a_backend_and_names_it_when_a_detector_finds_no_faces(tmp_path):
    """FER2013's 48 px crops through `ferdata prepare fer2013 --root ...` went to the default
    detector, which found no face in them, and the run ended in 'no sample is left in the official
    test split ... restore or fix those images'; `prepare` had no way to choose the backend."""
    import yaml

    from tests.ferdata.fixtures_datasets import pixel_text

    rows = [f"{i % 7},{pixel_text(5 * i + 3, 2304)},{('Training', 'PublicTest', 'PrivateTest')[i % 3]}"
            for i in range(24)]
    (tmp_path / "fer").mkdir()
    (tmp_path / "fer" / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = str(tmp_path / "cache")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ("prepare", "fer2013", "--root", str(tmp_path / "fer"), "--out", str(tmp_path / "out"))
    detected = _ferdata(*args, cwd=tmp_path)
    assert detected.returncode == 1, detected.stderr
    assert "found no face in 24 of 24 images" in detected.stderr and "--backend precropped" in detected.stderr
    cropped = _ferdata(*args, "--backend", "precropped", cwd=tmp_path)
    assert cropped.returncode == 0, cropped.stderr
    assert re.search(r"shard\s+kept\s+24\b", cropped.stdout), cropped.stdout


def test_backends_looks_in_the_model_folder(tmp_path):
    """`ferdata backends` said 'weights missing' for a pack placed under detect.model_dir, where
    README says to put it (it checked only the packages' default places)."""
    pytest.importorskip("insightface")
    pack = tmp_path / "models" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    for name in ("det_10g", "1k3d68", "2d106det"):
        (pack / f"{name}.onnx").write_bytes(b"")
    home = {"HOME": str(tmp_path / "home")}                  # no ~/.insightface to find it in instead
    without = _ferdata("backends", cwd=tmp_path, env=home)
    given = _ferdata("backends", "--model-dir", str(tmp_path / "models"), cwd=tmp_path, env=home)
    (tmp_path / "params.yaml").write_text(f"detect: {{model_dir: {tmp_path / 'models'}}}\n")
    from_params = _ferdata("backends", cwd=tmp_path, env=home)
    said = without.stdout + without.stderr
    assert "insightface     weights missing: det_10g.onnx (looked in " in without.stdout, said
    assert str(tmp_path / "home" / ".insightface") in without.stdout           # where it looked
    assert "insightface     available" in given.stdout and "insightface     available" in from_params.stdout


@pytest.fixture
def model_folder(tmp_path, monkeypatch):
    """tmp_path with models/ holding insightface's antelopev2 pack and FAN's weights (empty files)."""
    from ferdata.faces.fan import FAN_FILE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pack = tmp_path / "models" / "models" / "antelopev2"
    pack.mkdir(parents=True)
    for name in ("scrfd_10g_bnkps", "1k3d68", "2d106det"):
        (pack / f"{name}.onnx").write_bytes(b"")
    (tmp_path / "models" / FAN_FILE).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("options, says", [
    ("{pack: antelopev2}", "insightface     available"),
    ("{detector: sfd}", "face_alignment  weights missing: s3fd-619a316812.pth"),
    ("{flip_input: maybe}", "face_alignment  refuses detect.options (")])
def test_backends_judges_each_backend_with_the_detect_options(model_folder, options, says):
    """It read model_dir only: a configured antelopev2 pack that is there read "weights missing:
    det_10g.onnx" (buffalo_l's), and face_alignment {detector: sfd} "available" without S3FD's file."""
    if "pack" in options:
        pytest.importorskip("insightface")
    (model_folder / "params.yaml").write_text(f"detect: {{model_dir: models, options: {options}}}\n")
    res = CliRunner().invoke(app, ["backends"])
    assert res.exit_code == 0, res.output
    assert says in res.output, res.output


def test_options_for_the_configured_backend_do_not_hide_anothers_state(tmp_path, monkeypatch):
    """det_size 600 suits the embedded backend, not insightface (a multiple of 32): insightface read
    "refuses detect.options" instead of whether its weights are there; the configured one is still judged."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "params.yaml").write_text("detect: {backend: embedded, options: {det_size: 600}}\n")
    res = CliRunner().invoke(app, ["backends"])
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if s.startswith("insightface "))
    assert "refuses" not in line and ("weights missing" in line or "available" in line or "package" in line), line
    (tmp_path / "params.yaml").write_text("detect: {backend: insightface, options: {det_size: 600}}\n")
    res = CliRunner().invoke(app, ["backends"])
    assert "insightface     refuses detect.options" in res.output, res.output


@pytest.mark.parametrize("params, given, says", [
    (None, True, "error: elsewhere.yaml not found"),
    ("detect: 5\n", True, "error: elsewhere.yaml has no detect section (a mapping with model_dir) to read"),
    ("detect: {model_dir: 5}\n", False, "error: params.yaml: detect.model_dir must be a folder path or null, got 5")])
def test_backends_refuses_a_params_file_it_cannot_read(tmp_path, params, given, says):
    """A --params that is not there was ignored (rc 0); `detect: 5` or a number for model_dir gave a
    traceback. A params.yaml found here without a detect section (another project's) is passed over."""
    if params is not None:
        (tmp_path / ("elsewhere.yaml" if given else "params.yaml")).write_text(params)
    args = ("--params", "elsewhere.yaml") if given else ()
    done = _ferdata("backends", *args, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(says) and "Traceback" not in done.stderr, done.stderr
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\n")
    assert _ferdata("backends", cwd=tmp_path).returncode == 0


def test_cache_merge_refuses_a_source_that_is_no_database_before_making_the_target(tmp_path):
    (tmp_path / "faces.sqlite").write_bytes(b"not a database, just bytes" * 100)
    res = CliRunner().invoke(app, ["cache", "merge", str(tmp_path / "faces.sqlite"), "--into", str(tmp_path / "c1")])
    assert isinstance(res.exception, ValueError), res.exception
    assert "faces.sqlite is not a ferdata detection cache" in str(res.exception)
    assert not (tmp_path / "c1").exists()


def test_cache_prune_drops_what_no_dataset_would_use_now(tmp_path):
    """Entries of earlier keys (another release, setting or decoding) stayed for ever, about 2 kB per
    image per key; `cache prune` keeps the keys each dataset's detect section makes now."""
    import numpy as np
    import yaml

    from ferdata.cache import Detection, DetectionCache
    from ferdata.faces.base import Face
    from ferdata.stages.detect import DetectParams

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = str(tmp_path / "cache")
    params["datasets"] = {"mine": {"reader": "folder", "root": str(tmp_path / "faces"), "options": {}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    now = DetectParams(**params["detect"]).create_backend().signature()
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(tmp_path / "cache") as cache:
        for i in range(3):
            cache.put(f"n{i}", now, Detection((50, 60), (face,)))
        for i in range(2):
            cache.put(f"o{i}", "embedded:v2:old", Detection((50, 60), (face,)))
    args = ["cache", "prune", "--params", str(tmp_path / "p.yaml")]
    res = CliRunner().invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0 and "would drop 2, kept 3" in res.output and "embedded:v2:old" in res.output, res.output
    with DetectionCache(tmp_path / "cache") as cache:
        assert len(cache) == 5                                          # a dry run changes nothing
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "dropped 2, kept 3" in res.output, res.output
    with DetectionCache(tmp_path / "cache") as cache:
        assert cache.signatures() == {now: 3}


@pytest.mark.parametrize("spelling", ["absolute", "the file", "through a link", "from home"])
def test_cache_prune_keeps_every_datasets_entries_in_one_cache_spelled_two_ways(tmp_path, monkeypatch, spelling):
    """Dataset a uses detect.cache_dir .cache/ferdata, dataset b (its own det_size: another signature) the
    same folder spelled otherwise: prune pruned the file once per spelling, each time keeping only that
    spelling's signatures, and so dropped both datasets' detections."""
    import numpy as np
    import yaml

    from ferdata.cache import Detection, DetectionCache
    from ferdata.faces.base import Face
    from ferdata.params import load_params
    from ferdata.prepare import signatures_in_use

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "faces").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / ".cache")
    other = {"absolute": str(tmp_path / ".cache" / "ferdata"), "the file": ".cache/ferdata/detections.sqlite",
             "through a link": "link/ferdata", "from home": "~/.cache/ferdata"}[spelling]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = ".cache/ferdata"
    params["datasets"] = {"a": {"reader": "folder", "root": "faces", "options": {}},
                          "b": {"reader": "folder", "root": "faces", "options": {},
                                "detect": {"det_size": 320, "cache_dir": other}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    in_use = {sig for sigs in signatures_in_use(load_params("params.yaml")).values() for sig in sigs}
    assert len(in_use) == 2
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(".cache/ferdata") as cache:
        for i, sig in enumerate(sorted(in_use)):
            for j in range(3):
                cache.put(f"{i}{j}", sig, Detection((50, 60), (face,)))
        cache.put("old", "embedded:v2:old", Detection((50, 60), (face,)))
    res = CliRunner().invoke(app, ["cache", "prune"])
    assert res.exit_code == 0 and res.output.count("dropped") == 1 and "dropped 1, kept 6" in res.output, res.output
    with DetectionCache(".cache/ferdata") as cache:
        assert cache.signatures() == {sig: 3 for sig in in_use}
    assert not (tmp_path / "~").exists()


def test_a_keyerror_type_a_command_declares_bad_input_is_one_line(capsys):
    class NoSuchRun(KeyError):
        pass

    def app_():
        raise NoSuchRun("run 'x' is not in runs/")

    with pytest.raises(SystemExit) as done:
        run_cli(app_, extra=(NoSuchRun,), argv=[])
    assert done.value.code == 1 and capsys.readouterr().err.startswith("error: run 'x' is not in runs/\n")


def test_a_missing_params_section_is_bad_input_not_a_bug(capsys):
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: section_values({"train": {}}, "derive"), argv=[])
    assert done.value.code == 1
    assert capsys.readouterr().err.startswith("error: params.yaml has no 'derive' section (copy it from")


def test_a_named_keyerror_reads_plain_in_any_message():
    err = NamedKeyError("dataset 'x' is not in params.yaml datasets")
    assert str(err) == "dataset 'x' is not in params.yaml datasets" and f"{err}" == str(err)


@pytest.mark.parametrize("raised, says", [
    (MissingModelError("b", "m.onnx", [], "fix"), "weights missing: m.onnx (looked in no folder)"),
    (ImportError("no module named 'b'"), "package missing (no module named 'b')")])
def test_backends_lists_a_backend_it_cannot_run_with_why(monkeypatch, raised, says):
    name = BACKENDS.names()[0]

    def check_available(model_dir=None):
        raise raised

    monkeypatch.setattr(BACKENDS.get(name), "check_available", check_available)
    res = CliRunner().invoke(app, ["backends"])
    assert res.exit_code == 0, res.output
    assert f"{name:15s} {says}\n" in res.output, res.output


def test_verbose_logs_ours_at_debug_but_not_pils(caplog):
    """`ferdata predict -v` printed PIL's debug lines for every PNG chunk it read."""
    import logging

    from ferdata.cli import _setup_logging

    levels = {name: logging.getLogger(name).level for name in ("PIL", "matplotlib")}
    caplog.set_level(logging.DEBUG)
    try:
        _setup_logging(verbose=True)
        assert logging.getLogger("ferdata.stages.detect").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("prog", ["ferdata", "fermodels"])
def test_version_is_the_installed_release_and_cheap(prog):
    """`--version` for a bug report: the release pip installed (its metadata, from pyproject's dynamic
    version), printed without importing torch, and the subcommands unchanged beside it."""
    from importlib.metadata import version

    import fermodels.cli

    cli = {"ferdata": app, "fermodels": fermodels.cli.app}[prog]
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output == f"{prog} {version('ferdata')}\n", result.output
    code = (f"import sys; sys.argv = ['{prog}', '--version']\nfrom {prog}.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    assert "torch" not in _heavy_modules_after(code)       # its last line: the modules imported
    assert CliRunner().invoke(cli, ["list" if prog == "fermodels" else "datasets"]).exit_code == 0


def test_cache_prune_keeps_the_entries_of_every_checkout_sharing_the_cache(tmp_path):
    """README shares one absolute detect.cache_dir (~/.cache/ferdata) between checkouts, and queued
    experiments with their own detect settings use the workspace's: `cache prune` kept only what one
    params.yaml uses, so pruning from one checkout dropped the other's detections (hours of detection
    again on AffectNet). Every --params given is kept."""
    import numpy as np
    import yaml

    from ferdata.cache import Detection, DetectionCache
    from ferdata.faces.base import Face
    from ferdata.params import load_params
    from ferdata.prepare import signatures_in_use

    sigs = []
    for name, det_size in (("a", 640), ("b", 320)):          # two checkouts, one shared cache, other settings
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["detect"].update(cache_dir=str(tmp_path / "shared"), det_size=det_size)
        params["datasets"] = {name: {"reader": "folder", "root": str(tmp_path / "faces"), "options": {}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        sigs += [sig for s in signatures_in_use(load_params(tmp_path / f"{name}.yaml")).values() for sig in s]
    assert len(set(sigs)) == 2
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(tmp_path / "shared") as cache:
        for i, sig in enumerate(sigs):
            for j in range(3):
                cache.put(f"{i}{j}", sig, Detection((50, 60), (face,)))
        cache.put("old", "embedded:v2:old", Detection((50, 60), (face,)))
    res = CliRunner().invoke(app, ["cache", "prune", "--params", str(tmp_path / "a.yaml"),
                                   "--params", str(tmp_path / "b.yaml")])
    assert res.exit_code == 0 and "dropped 1, kept 6" in res.output, res.output
    with DetectionCache(tmp_path / "shared") as cache:
        assert cache.signatures() == {sig: 3 for sig in sigs}


# ---- console lines stay inert whatever a message carries (audit h72) --------------------------------------------
NAMES = ["pin/esc\x1b[31mred\x1b]0;title\x07.jpg", "pin/cr\rdone.jpg", "pin/" + os.fsdecode(b"bad\xff.jpg"),
         "pin/rlo\u202egpj.exe"]


def _inert(line: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c == "\u202e" or 0xd800 <= ord(c) < 0xe000
                   for c in line)


def test_the_error_line_is_inert_whatever_the_message_carries(capsys):
    """An exception's text naming a file no call site escaped (ferdata.errors.shown) reached the terminal
    raw through ``error: ...``; the message's own line breaks stay (a layout error's found: / fix: lines)."""
    def bad_input():
        raise ValueError(f"{NAMES[0]}: damaged\n  fix: {NAMES[1]}")

    with pytest.raises(SystemExit):
        run_cli(bad_input, argv=[])
    err = capsys.readouterr().err
    assert all(_inert(line) for line in err.splitlines()), repr(err)
    assert "error: pin/esc\\x1b[31mred\\x1b]0;title\\x07.jpg: damaged\n  fix: pin/cr\\rdone.jpg" in err


@pytest.mark.parametrize("setup", ["from ferdata.cli import _setup_logging; _setup_logging(False)",
                                   "import sys; sys.argv[1:] = ['a']; from pipeline._args import setup; "
                                   "setup.__globals__['arguments'] = lambda doc, argv: argv; setup(check_all=False)"])
def test_the_commands_log_lines_are_inert(setup, tmp_path):
    """``ferdata``'s and the stage scripts' console log lines: a name in a message that no call site passed
    through ``shown`` (an exception's text, a third party's) set the terminal's title, cleared the screen or
    overwrote the line; the message's own line breaks stay."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    script = (f"{setup}\nimport logging\n"
              f"logging.getLogger('ferdata.x').warning('read %s\\nsecond line', {NAMES[0] + NAMES[2]!r})")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          errors="surrogateescape", env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if "ferdata.x" in ln or "second line" in ln]
    assert len(lines) == 2 and all(_inert(ln) for ln in lines), repr(proc.stderr)
    assert "read pin/esc\\x1b[31mred\\x1b]0;title\\x07.jpgpin/bad\\udcff.jpg" in lines[0]
