"""An animated GIF or WebP given to predict is scored on its first frame, as the align stage decodes it; the
user is told, not handed one row as if the file held one picture (audit h88)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fermodels.predict import expand_inputs, iter_frames


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_an_animation_is_scored_on_its_first_frame_and_says_so(tmp_path, suffix, caplog):
    frames = [Image.fromarray(np.full((64, 64, 3), v, np.uint8)) for v in (30, 120, 220)]
    path = tmp_path / f"clip{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / f"still{suffix}")
    with caplog.at_level(logging.WARNING, logger="fermodels.predict"):
        ((index, picture, problem),) = iter_frames(path, 1)
        assert list(iter_frames(tmp_path / f"still{suffix}", 1))[0][1] is not None
    assert index == 0 and picture is not None and not problem
    assert [r.getMessage() for r in caplog.records] == [f"{path} holds 3 pictures (an animated GIF/WebP/PNG or a "
                                                        "multi-page TIFF): only the first is scored (as a video, "
                                                        "e.g. .mp4, every frame would be)"]


def test_a_folders_gifs_are_scored_as_a_named_one(tmp_path):
    """They were skipped as "neither image nor video" (audit h110) while a GIF named was scored."""
    for name in ("a.jpg", "b.gif", "c.txt"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    assert expand_inputs([tmp_path / "in"]) == [tmp_path / "in" / "a.jpg", tmp_path / "in" / "b.gif"]
