"""A video file cut short (a copy or download stopped part way) is found by its container's sizes, not only by a
frame count: a cut Matroska/WebM file gives OpenCV the whole file's count (duration x fps, the duration written at
its start), so its missing end went unreported, and an AVI missing its last frame was within the count's slack
(audit h106)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from fermodels.predict import iter_frames
from fermodels.videofile import missing_bytes


def write_video(path, fourcc: str, frames: int = 30) -> bytes:
    from skimage import data

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (128, 128))
    face = cv2.resize(data.astronaut()[..., ::-1], (128, 128))
    for k in range(frames):
        writer.write(np.roll(face, k, axis=1))
    writer.release()
    return path.read_bytes()


@pytest.mark.parametrize("name, fourcc, kept", [("clip.mkv", "MJPG", 0.6), ("clip.webm", "VP80", 0.6),
                                                ("clip.avi", "MJPG", 0.99), ("clip.mp4", "mp4v", 0.5)])
def test_a_video_cut_short_is_reported_in_every_container(tmp_path, name, fourcc, kept, caplog):
    whole = write_video(tmp_path / name, fourcc)
    assert [why for _, _, why in iter_frames(tmp_path / name, 10)] == ["", "", ""]       # whole: nothing to say
    assert missing_bytes(tmp_path / name) == 0
    cut = tmp_path / f"cut{name[4:]}"
    cut.write_bytes(whole[: int(len(whole) * kept)])
    if name.endswith(".mp4"):       # OpenCV's MP4 has its index at the end: cut, no frame can be read (audit h129: it
        with caplog.at_level(logging.WARNING):      # was called unreadable_video, as an unknown format is)
            assert [why for _, _, why in iter_frames(cut, 10)] == ["video_cut_short"]
        assert "no frame of it could be read" in caplog.text
        return
    with caplog.at_level(logging.WARNING):
        got = [(i, why) for i, _, why in iter_frames(cut, 10)]
    assert got[-1][1] == "video_cut_short", got
    assert all(why == "" for _, why in got[:-1])                 # the frames there are scored
    assert "a file cut short?" in caplog.text and " s; " in caplog.text


def test_a_live_webm_whose_size_is_unknown_is_not_called_cut(tmp_path):
    """A browser's recording (MediaRecorder) writes its Segment's size as unknown: nothing to compare."""
    data = bytearray(write_video(tmp_path / "clip.webm", "VP80"))
    at = data.find(b"\x18\x53\x80\x67") + 4
    width = next(k for k in range(1, 9) if data[at] & (0x80 >> (k - 1)))
    data[at:at + width] = ((1 << 7 * width + 1) - 1).to_bytes(width, "big")     # marker + all ones: unknown
    (tmp_path / "live.webm").write_bytes(bytes(data[: len(data) * 2 // 3]))
    assert missing_bytes(tmp_path / "live.webm") == 0


def test_files_of_no_known_container_have_no_sizes(tmp_path):
    (tmp_path / "x.mts").write_bytes(b"\x47" + bytes(187) * 3)
    (tmp_path / "empty.mkv").write_bytes(b"")
    assert missing_bytes(tmp_path / "x.mts") == missing_bytes(tmp_path / "empty.mkv") == 0


def test_a_whole_mp4_whose_edit_list_shows_part_of_its_frames_is_not_cut_short(tmp_path, caplog):
    """``ffmpeg -ss 1.5 -i in.mp4 -c copy out.mp4`` keeps the frames back to the keyframe before 1.5 s and an edit
    list that hides them: OpenCV's count (the sample table's) then exceeds the frames it gives, and a whole clip
    was named video_cut_short. Imitated by editing the list of a 30-frame clip to show frames 10 to 29."""
    data = bytearray(write_video(tmp_path / "clip.mp4", "mp4v"))
    at = data.find(b"elst") + 12                      # the first edit: duration (movie time), media time (track)
    movie = int.from_bytes(data[data.find(b"mvhd") + 16:data.find(b"mvhd") + 20], "big")
    track = int.from_bytes(data[data.find(b"mdhd") + 16:data.find(b"mdhd") + 20], "big")
    data[at:at + 8] = (2 * movie).to_bytes(4, "big") + track.to_bytes(4, "big")      # 1 s in, 2 s shown
    (tmp_path / "trimmed.mp4").write_bytes(bytes(data))
    assert cv2.VideoCapture(str(tmp_path / "trimmed.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 30
    with caplog.at_level(logging.WARNING):
        assert [(i, why) for i, _, why in iter_frames(tmp_path / "trimmed.mp4", 10)] == [(0, ""), (10, "")]
    assert "cut short" not in caplog.text


@pytest.mark.parametrize("tail, missing", [(bytes(8) + bytes(1000), 0), (bytes(3), 5)])
def test_an_mp4_box_whose_64_bit_size_is_zero_or_cut_off_ends_the_walk(tmp_path, tail, missing):
    """A box of size 1 takes its size from the next 8 bytes: 0 there (a placeholder, a damaged file), or those
    bytes cut off (a download stopped in the box's header), left the walk where it was, forever: predict hung
    on the video once its frames were decoded."""
    import subprocess
    import sys

    ftyp = (24).to_bytes(4, "big") + b"ftypisom" + bytes(4) + b"isomiso2"
    (tmp_path / "odd.mp4").write_bytes(ftyp + (1).to_bytes(4, "big") + b"mdat" + tail)
    code = "import sys, pathlib, fermodels.videofile as v; print(v.missing_bytes(pathlib.Path(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "odd.mp4")], capture_output=True, text=True,
                          timeout=30)         # in a process of its own: the hang is ended by the timeout
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == missing


def test_an_mp4_recording_stopped_before_its_index_is_a_video_cut_short(tmp_path, caplog):
    """A recorder killed part way (OpenCV's, ffmpeg's writer) leaves its media box's size the placeholder 0 and no
    moov: nothing lies past the file's end to find, so it was `unreadable_video`, as an unknown format is."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", (
        "import os, cv2, numpy as np\n"
        f"w = cv2.VideoWriter({str(tmp_path / 'rec.mp4')!r}, cv2.VideoWriter_fourcc(*'mp4v'), 25, (64, 48))\n"
        "for i in range(120):\n"
        "    w.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))\n"
        "os._exit(0)\n")], check=True)
    with caplog.at_level(logging.WARNING):
        assert [why for _, _, why in iter_frames(tmp_path / "rec.mp4", 10)] == ["video_cut_short"]
    assert "no index (moov)" in caplog.text
    (tmp_path / "other.mp4").write_bytes(b"not a video at all")
    assert [why for _, _, why in iter_frames(tmp_path / "other.mp4", 10)] == ["unreadable_video"]
