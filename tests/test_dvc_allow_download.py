"""``detect.allow_download`` says whether missing weights may be fetched, never which faces are found
(the same model files either way, by content in the detection cache key; ``auto`` never downloads):
toggling it to fetch a pack once, and back, re-ran detect twice over the whole dataset (every image
read and hashed again on AffectNet) for byte-identical outputs."""
from pathlib import Path

import yaml

from ferdata.params import SPEED_ONLY

ROOT = Path(__file__).resolve().parents[1]


def test_allow_download_is_no_dvc_param_of_detect():
    detect = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["detect"]["do"]
    assert "detect.allow_download" not in detect["params"]
    assert "allow_download" in SPEED_ONLY["detect"]           # crossval groups folds without it too
