"""Long file names in ``ferdata predict --annotate`` (audit h64)."""
from __future__ import annotations

import os

from fermodels.predict import annotation_names, annotation_path


def test_annotated_copies_of_inputs_named_near_the_limit_can_be_written(tmp_path):
    """``x.png`` gets the copy ``x.png.jpg`` and a video's frames ``clip.avi.f000010.jpg``: for a name
    within a few bytes of 255 that name could not be created, and the run ended there (after scoring
    every earlier file) with ``File name too long``, writing no predictions at all."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    long_png = "\u00e9" * 125 + "x.png"                          # 255 bytes
    files = [inputs / long_png, inputs / ("\u00e9" * 125 + "y.png"), inputs / ("v" * 247 + ".avi"),
             inputs / "short.png", inputs / ("a" * 251 + ".jpg")]
    for f in files:
        f.write_bytes(b"")
    names = annotation_names([inputs], files)
    assert len(set(names.values())) == len(files)                 # still one copy name per input
    assert names[inputs / "short.png"].name == "short.png.jpg"    # names that fit are kept as they were
    assert names[inputs / ("a" * 251 + ".jpg")].name == "a" * 251 + ".jpg"
    ann = tmp_path / "ann"
    ann.mkdir()
    for f in files:
        video = f.suffix == ".avi"
        copy = ann / annotation_path(names[f], 1234567 if video else 0, video)
        assert len(os.fsencode(copy.name)) <= 255, copy.name
        assert copy.name.endswith(".jpg")
        copy.write_bytes(b"x")                                    # the file system takes the name
