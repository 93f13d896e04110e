"""A video whose pixels are not square (HDV and AVCHD camcorders' 1440x1080 shown as 1920x1080, DVDs, anamorphic
phone apps) is scored as a player shows it: OpenCV gives the stored pixels, on which every face was 3/4 as wide
as it is, and was aligned so - a crop 30-45 grey levels from the right one on average (audit h106)."""
from __future__ import annotations

import cv2
import numpy as np

from fermodels.predict import iter_frames, square_pixels


def with_pixel_aspect(data: bytes, h: int, v: int) -> bytes:
    """OpenCV's MP4 (its moov after the frames) with a ``pasp`` box (pixel aspect h:v) in its mp4v sample entry;
    the boxes holding that entry grow by the 16 bytes."""
    entry = data.index(b"mp4v", data.index(b"stsd")) - 4
    end = entry + int.from_bytes(data[entry:entry + 4], "big")
    out = bytearray(data[:end] + (16).to_bytes(4, "big") + b"pasp" + h.to_bytes(4, "big") + v.to_bytes(4, "big")
                    + data[end:])
    holders = [data.rindex(name, 0, entry) - 4 for name in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")]
    for at in [*holders, entry]:
        out[at:at + 4] = (int.from_bytes(data[at:at + 4], "big") + 16).to_bytes(4, "big")
    return bytes(out)


def test_a_video_of_non_square_pixels_is_scored_as_shown(tmp_path):
    shown = np.zeros((96, 128, 3), np.uint8)
    cv2.circle(shown, (64, 48), 30, (255, 255, 255), -1)            # a round face, as a player shows it
    stored = cv2.resize(shown, (96, 96), interpolation=cv2.INTER_AREA)     # stored 4:3 pixels: squeezed
    writer = cv2.VideoWriter(str(tmp_path / "made.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
    for _ in range(3):
        writer.write(stored)
    writer.release()
    path = tmp_path / "hdv.mp4"
    path.write_bytes(with_pixel_aspect((tmp_path / "made.mp4").read_bytes(), 4, 3))
    cap = cv2.VideoCapture(str(path))
    assert (cap.get(cv2.CAP_PROP_SAR_NUM), cap.get(cv2.CAP_PROP_SAR_DEN)) == (4, 3)
    ((_, picture, _),) = [f for f in iter_frames(path, 10)]
    assert picture.rgb.shape == (96, 128, 3)
    ys, xs = np.nonzero(picture.rgb[..., 0] > 128)
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 3         # round again, not 3/4 as wide


def test_square_pixels_leave_a_frame_as_it_is():
    frame = np.zeros((4, 6, 3), np.uint8)
    assert square_pixels(frame, 1.0) is frame
    assert square_pixels(frame, 8 / 9).shape == (4, 5, 3)


def test_a_turned_video_of_non_square_pixels_is_stretched_along_its_stored_rows():
    """A phone's video is stored on its side and turned upright by OpenCV: its stored rows are then columns."""
    from fermodels.predict import pixel_aspect

    class Capture:
        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_SAR_NUM: 4.0, cv2.CAP_PROP_SAR_DEN: 3.0, cv2.CAP_PROP_ORIENTATION_META: 270.0}[prop]

    assert pixel_aspect(Capture()) == 0.75
