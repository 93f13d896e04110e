"""README lists the folder reader's ``dataset`` option among those its table leaves out, and said nothing of it
(audit h110): it explains what the option sets and that metrics and checks go by the params.yaml name."""
from __future__ import annotations

from pathlib import Path

from ferdata.datasets.folder import FolderReader

README = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())


def test_readme_says_what_the_folder_readers_dataset_option_records():
    assert FolderReader.option_defaults["dataset"] == "folder"
    assert "its `dataset` option (`--option dataset=" in README
    assert "It is provenance only: training, `evaluate`'s `per_dataset`" in README
