"""`ferdata backends` judged only the detect section: a dataset's own detect values (README: "A dataset
may set its own detect values over the section's"), such as its own backend, pack or model_dir, were never
checked, so it said nothing of the models that dataset's detect stage needs (audit h67)."""
from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from ferdata.cli import app

PROJECT = Path(__file__).resolve().parents[2] / "params.yaml"


def test_backends_judges_a_datasets_own_detect_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = yaml.safe_load(PROJECT.read_text())
    params["datasets"] = {
        "fer2013": {"reader": "fer2013", "root": "raw/FER2013", "detect": {"backend": "precropped"}},
        "rafdb": {"reader": "rafdb", "root": "raw/RAF-DB",
                  "detect": {"backend": "face_alignment", "model_dir": "nowhere", "options": {"detector": "sfd"}}},
        "plain": {"reader": "folder", "root": "raw/plain"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    res = CliRunner().invoke(app, ["backends"])
    assert res.exit_code == 0, res.output
    lines = [s for s in res.output.splitlines() if s.startswith("datasets.")]
    assert len(lines) == 2, res.output                                         # "plain" uses the section's
    assert lines[0].startswith("datasets.fer2013 precropped: available"), res.output
    assert lines[1].startswith("datasets.rafdb face_alignment: weights missing"), res.output
    assert "nowhere" in lines[1], res.output                                   # its own model_dir
    res = CliRunner().invoke(app, ["backends", "--model-dir", str(tmp_path / "models")])
    rafdb = [s for s in res.output.splitlines() if s.startswith("datasets.rafdb")]
    assert rafdb and "nowhere" not in rafdb[0] and "models" in rafdb[0], res.output   # --model-dir wins


def test_backends_lists_every_backend_whatever_the_datasets_section_holds(tmp_path, monkeypatch):
    """A params.yaml found here may be another project's (the detect section is read only when it is
    one): a `datasets` list there ended `ferdata backends` with an error after its lines (audit h70)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "params.yaml").write_text("detect:\n  backend: auto\ndatasets:\n  - fer2013\n")
    res = CliRunner().invoke(app, ["backends"])
    assert res.exit_code == 0, res.output
    assert "precropped" in res.output and "datasets:" in res.output, res.output
