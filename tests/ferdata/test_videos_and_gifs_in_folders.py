"""A video or a GIF among a folder dataset's images (audit h110): both were dropped as ``not_an_image: not one
of .bmp, ...``. A video is ``video_file`` with how to extract its frames (video FER sets, RAVDESS, DFEW, AFEW,
ship clips); a GIF says it is not read and what to do; a folder of videos alone names one in its error."""
from __future__ import annotations

import pytest

from ferdata.datasets import open_reader
from tests.ferdata.fixtures_datasets import read_all, write_image

MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\0" * 100


def test_a_video_in_a_class_folder_is_a_video_file_drop_with_the_fix(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    (tmp_path / "happy" / "01-01-03.mp4").write_bytes(MP4)
    _, drops, items = read_all("folder", tmp_path)
    assert drops == {"video_file": 1}
    assert "01-01-03.mp4: a video: extract its frames first" in items[0].detail
    assert "-vf fps=5 01-01-03/%04d.png" in items[0].detail and "options.subject" in items[0].detail


def test_a_gif_in_a_class_folder_says_it_is_not_read_and_what_to_do(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    (tmp_path / "happy" / "b.gif").write_bytes(b"GIF89a" + b"\0" * 20 + b";")
    _, drops, items = read_all("folder", tmp_path)
    assert drops == {"not_an_image": 1}
    assert "a GIF is not read" in items[0].detail and "convert a still one to PNG" in items[0].detail


def test_a_folder_of_videos_alone_names_one_in_its_error(tmp_path):
    for name in ("happy/1.mp4", "sad/2.avi"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(MP4)
    with pytest.raises(ValueError, match=r"dropped: \{'video_file': 2\}, e\.g\. .*1\.mp4: a video: extract its frames"):
        list(open_reader("folder", tmp_path).read())
