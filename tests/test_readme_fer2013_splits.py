"""README says how FER2013's Usage values and FERPlus's folders map to the train/val/test splits, as the
readers map them (it named PrivateTest only in passing: a researcher could not tell whether PublicTest was
val, test or pooled into test, which changes the reported figure)."""
from __future__ import annotations

from pathlib import Path

from ferdata.datasets.fer2013 import FERPLUS_DIRS, USAGE

README = Path(__file__).resolve().parents[1] / "README.md"
PUBLISHED = {"training": "Training", "publictest": "PublicTest", "privatetest": "PrivateTest"}


def test_readme_maps_every_fer2013_usage_and_ferplus_folder_to_its_split():
    text = " ".join(README.read_text(encoding="utf-8").split())
    for usage, split in USAGE.items():
        assert f"`{PUBLISHED[usage]}` → {split}" in text, f"README does not say `{PUBLISHED[usage]}` → {split}"
    for split, folder in FERPLUS_DIRS.items():
        assert f"`{folder}` → {split}" in text, f"README does not say `{folder}` → {split}"
