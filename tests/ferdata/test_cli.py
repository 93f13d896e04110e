"""The `ferdata` command line: cheap to start (torch is imported only by the command that needs
it) and every command, `predict` included, listed with its options."""
from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from ferdata.cli import app

COMMANDS = ("prepare", "datasets", "backends", "verify", "sample", "show", "predict")
PREDICT_OPTIONS = ("--model", "-m", "--out", "-o", "--annotate", "--backend", "--model-dir", "--batch-size",
                   "--every", "--device", "--flip-tta")


def _heavy_modules_after(code: str) -> list[str]:
    """Which of torch/fermodels a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in ('torch', 'fermodels') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [m for m in proc.stdout.strip().splitlines()[-1].split(",") if m] if proc.stdout.strip() else []


def test_importing_the_cli_does_not_import_torch():
    assert _heavy_modules_after("import ferdata.cli") == []


def test_help_does_not_import_torch():
    code = ("from typer.testing import CliRunner\nfrom ferdata.cli import app\n"
            "res = CliRunner().invoke(app, ['--help'])\nassert res.exit_code == 0, res.output")
    assert _heavy_modules_after(code) == []


def test_help_lists_every_command():
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert f" {name} " in res.output, name


def test_predict_help_keeps_its_options():
    res = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    words = res.output.split()
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
