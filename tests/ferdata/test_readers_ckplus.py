"""CK+: last frames up to the labelled peak, float label files, unlabelled sequences, landmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferdata.datasets import DatasetLayoutError
from tests.ferdata.fixtures_datasets import landmarks68, make_ckplus, read_all, write_image

# hand-written CK+ table: 0 neutral 1 anger 2 contempt 3 disgust 4 fear 5 happy 6 sadness 7 surprise
DISGUST, CONTEMPT, NEUTRAL = 5, 7, 0


def test_last_three_frames_up_to_peak(tmp_path, caplog):
    make_ckplus(tmp_path)
    records, drops, items = read_all("ckplus", tmp_path)
    got = {k: (r.label, r.native_label, r.subject, r.extra["role"]) for k, r in records.items()}
    assert got == {
        "S005_001_00000003": (DISGUST, "3", "S005", "peak"),
        "S005_001_00000004": (DISGUST, "3", "S005", "peak"),
        "S005_001_00000005": (DISGUST, "3", "S005", "peak"),
        "S010_001_00000002": (CONTEMPT, "2", "S010", "peak"),
        "S010_001_00000003": (CONTEMPT, "2", "S010", "peak"),
        "S010_001_00000004": (CONTEMPT, "2", "S010", "peak"),
    }
    assert drops == {"no_emotion_label": 1, "bad_label": 1}
    assert {d.key: d.reason for d in items} == {"S005_002": "no_emotion_label", "S010_002": "bad_label"}
    # frame 3's landmarks file has 10 lines: the frame and its label are kept, without landmarks, noted
    assert records["S010_001_00000003"].landmarks is None
    assert "ckplus: 1 record(s) kept without landmarks" in caplog.text and "S010_001_00000003" in caplog.text
    r = records["S005_001_00000004"]
    assert r.landmarks.dtype == np.float32 and r.landmarks.shape == (68, 2)
    np.testing.assert_allclose(r.landmarks, landmarks68(4.0), rtol=1e-6)
    assert r.extra["sequence"] == "S005_001" and r.extra["frame"] == 4
    assert records["S010_001_00000002"].landmarks is None
    assert all(r.split == "" for r in records.values())


def test_neutral_onset_frames_and_frame_count(tmp_path):
    make_ckplus(tmp_path)
    records, _, _ = read_all("ckplus", tmp_path, {"frames": 1, "neutral_frames": 1})
    assert {k: r.label for k, r in records.items()} == {
        "S005_001_00000001": NEUTRAL, "S005_001_00000005": DISGUST,
        "S010_001_00000001": NEUTRAL, "S010_001_00000004": CONTEMPT,
    }
    assert records["S005_001_00000001"].native_label == "0"
    assert records["S005_001_00000001"].extra["role"] == "onset"


def test_bad_options_and_layout(tmp_path):
    make_ckplus(tmp_path)
    with pytest.raises(ValueError, match="frames must be"):
        read_all("ckplus", tmp_path, {"frames": 0})
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "cohn-kanade-images").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        read_all("ckplus", empty)
    assert "expected: cohn-kanade-images/S###/, Emotion/S###/" in str(err.value)
    assert "found:    cohn-kanade-images" in str(err.value)


@pytest.mark.parametrize("options, named", [
    ({"frames": "abc"}, "options.frames must be a whole number >= 1, got 'abc'"),
    ({"frames": 2.5}, "options.frames must be a whole number >= 1, got 2.5"),
    ({"frames": True}, "options.frames must be a whole number >= 1, got True"),
    ({"neutral_frames": "x"}, "options.neutral_frames must be a whole number >= 0, got 'x'"),
    ({"neutral_frames": -1}, "options.neutral_frames must be a whole number >= 0, got -1"),
])
def test_a_frame_count_that_is_not_a_whole_number_names_the_option(tmp_path, options, named):
    make_ckplus(tmp_path)
    with pytest.raises(ValueError) as err:
        read_all("ckplus", tmp_path, options)
    assert str(err.value) == f"ckplus: {named}"


def test_a_whole_float_frame_count_is_that_number(tmp_path):
    make_ckplus(tmp_path)
    records, _, _ = read_all("ckplus", tmp_path, {"frames": 1.0})
    assert len(records) == 2


def test_seven_class_protocol_drops_contempt_sequences(tmp_path, caplog):
    make_ckplus(tmp_path)
    records, drops, items = read_all("ckplus", tmp_path, {"exclude_classes": ["Contempt"]})
    assert sorted(records) == ["S005_001_00000003", "S005_001_00000004", "S005_001_00000005"]
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "excluded_class": 3}
    assert {d.key for d in items if d.reason == "excluded_class"} == {f"S010_001_0000000{f}" for f in (2, 3, 4)}
    assert "kept without landmarks" not in caplog.text       # frame 3's note: the frame was dropped after all


def test_a_label_whose_frames_are_missing_is_a_counted_drop(tmp_path):
    """A partly extracted CK+: an Emotion/ label with no image folder was skipped without a count."""
    make_ckplus(tmp_path)
    (tmp_path / "Emotion" / "S999" / "001").mkdir(parents=True)
    (tmp_path / "Emotion" / "S999" / "001" / "S999_001_00000010_emotion.txt").write_text("   1.0e+00\n")
    _, drops, items = read_all("ckplus", tmp_path)
    assert drops["missing_image"] == 1
    (gone,) = [d for d in items if d.reason == "missing_image"]
    assert gone.key == "S999_001" and "cohn-kanade-images/S999/001/" in gone.detail


def test_a_stray_image_beside_the_frames_is_dropped_alone(tmp_path):
    make_ckplus(tmp_path)
    seq = tmp_path / "cohn-kanade-images" / "S005" / "001"
    for name in ("S005_001_00000005 (copy).png", "preview.png"):
        write_image(seq / name)
    records, drops, items = read_all("ckplus", tmp_path)
    assert [k for k in records if k.startswith("S005_001")] == [f"S005_001_0000000{f}" for f in (3, 4, 5)]
    strays = sorted(d.detail for d in items if d.reason == "bad_filename")
    assert [Path(s.split(":")[0]).name for s in strays] == ["S005_001_00000005 (copy).png", "preview.png"]


def test_a_hidden_frame_is_a_counted_drop_and_not_a_frame(tmp_path):
    make_ckplus(tmp_path)
    hidden = tmp_path / "cohn-kanade-images" / "S005" / "001" / "._S005_001_00000005.png"
    write_image(hidden)
    records, drops, items = read_all("ckplus", tmp_path)
    assert sorted(k for k in records if k.startswith("S005_001")) == [f"S005_001_0000000{f}" for f in (3, 4, 5)]
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "hidden_file": 1}
    assert [d.detail.split(":")[0] for d in items if d.reason == "hidden_file"] == [str(hidden)]


def _ckplus_sequence(root: Path, frames: int, peak: int, label: str = "3", labels_at: tuple[int, ...] = ()) -> None:
    """One CK+ sequence S020/001 with ``frames`` frames and an emotion file at ``peak`` (and ``labels_at``)."""
    for f in range(1, frames + 1):
        write_image(root / "cohn-kanade-images" / "S020" / "001" / f"S020_001_{f:08d}.png", value=f * 20)
    for f in (peak, *labels_at):
        path = root / "Emotion" / "S020" / "001" / f"S020_001_{f:08d}_emotion.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"   {label}.0000000e+00\n")


def test_a_frame_chosen_as_peak_is_not_also_an_onset_neutral(tmp_path):
    """Bug guarded: onset frames taken from the first ``neutral_frames`` without leaving out the
    peak frames, so a short sequence gave one frame twice, once Neutral and once its expression."""
    _ckplus_sequence(tmp_path, frames=4, peak=4)                  # frames 2-4 are the peak frames
    records, _, items = read_all("ckplus", tmp_path, {"frames": 3, "neutral_frames": 2})
    assert {k: (r.label, r.extra["role"]) for k, r in records.items()} == {
        "S020_001_00000001": (NEUTRAL, "onset"),
        "S020_001_00000002": (DISGUST, "peak"), "S020_001_00000003": (DISGUST, "peak"),
        "S020_001_00000004": (DISGUST, "peak")}
    assert not items


def test_two_emotion_files_in_one_sequence_are_ambiguous_not_the_first_taken(tmp_path):
    """Bug guarded: a sequence with two label files read the first (sorted) one; which frame is the
    peak and which label holds cannot be told, so the sequence is dropped as ambiguous_label."""
    make_ckplus(tmp_path)
    _ckplus_sequence(tmp_path, frames=5, peak=5, labels_at=(4,))
    records, _, items = read_all("ckplus", tmp_path)
    assert not any(k.startswith("S020") for k in records)
    assert {d.key: d.reason for d in items if d.key.startswith("S020")} == {"S020_001": "ambiguous_label"}


def _write_label(root: Path, name: str, value: str = "   3.0000000e+00\n") -> Path:
    """An emotion file ``name`` (``S005_001_00000005_emotion.txt``) in its Emotion/<subject>/<sequence>/."""
    subject, seq = name.lstrip("._").split("_")[:2]
    path = root / "Emotion" / subject / seq / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    return path


def test_an_appledouble_emotion_file_is_a_hidden_drop_not_a_second_label(tmp_path):
    """Bug guarded: macOS's ``._S005_001_00000005_emotion.txt`` beside the label was read as a second
    label, the sequence dropped as ambiguous_label (a whole copy from a Mac lost every sequence)."""
    make_ckplus(tmp_path)
    beside = _write_label(tmp_path, "._S005_001_00000005_emotion.txt", "\x00\x05\x16\x07")
    records, drops, items = read_all("ckplus", tmp_path)
    assert sorted(k for k in records if k.startswith("S005_001")) == [f"S005_001_0000000{f}" for f in (3, 4, 5)]
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "hidden_file": 1}
    assert [d.detail.split(":")[0] for d in items if d.reason == "hidden_file"] == [str(beside)]


def test_an_appledouble_label_without_frames_is_a_hidden_drop_not_a_missing_sequence(tmp_path):
    """Bug guarded: the search for labels without their frames took ``._`` files for labels too: each
    counted as a missing_image sequence (and twice beside a real label)."""
    make_ckplus(tmp_path)
    real = _write_label(tmp_path, "S999_001_00000010_emotion.txt")
    beside = _write_label(tmp_path, "._S999_001_00000010_emotion.txt", "\x00\x05\x16\x07")
    alone = _write_label(tmp_path, "._S998_001_00000010_emotion.txt", "\x00\x05\x16\x07")
    _, drops, items = read_all("ckplus", tmp_path)
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "missing_image": 1, "hidden_file": 2}
    assert [d.detail.split(":")[0] for d in items if d.reason == "missing_image"] == [str(real)]
    assert sorted(d.detail.split(":")[0] for d in items if d.reason == "hidden_file") == sorted([str(beside),
                                                                                                str(alone)])


def test_a_frame_saved_twice_is_read_once_from_its_png(tmp_path):
    """Bug guarded: ``.png`` and ``.jpg`` copies of one frame were two frames: the last 3 held a copy
    (one key twice), frame 3 fell out of the window, and nothing recorded it."""
    make_ckplus(tmp_path)
    seq = tmp_path / "cohn-kanade-images" / "S005" / "001"
    copies = [write_image(seq / name, value=99) for name in (
        "S005_001_00000005.JPG", "S005_001_00000005.bmp", "S005_001_00000004.jpg")]
    records, drops, items = read_all("ckplus", tmp_path)
    mine = {k: Path(r.path).name for k, r in records.items() if k.startswith("S005_001")}
    assert mine == {f"S005_001_0000000{f}": f"S005_001_0000000{f}.png" for f in (3, 4, 5)}
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "duplicate_frame": 3}
    dups = sorted((d.detail.split(":")[0], d.detail) for d in items if d.reason == "duplicate_frame")
    assert [p for p, _ in dups] == sorted(str(p) for p in copies)
    assert all(f"{Path(p).stem}.png is" in detail for p, detail in dups)
    assert len({d.key for d in items if d.reason == "duplicate_frame"} | set(records)) == len(records) + 3


def test_a_frame_saved_only_as_jpeg_is_still_read(tmp_path):
    """The preference for ``.png`` chooses among copies of a frame: a frame with one file is that file."""
    make_ckplus(tmp_path)
    seq = tmp_path / "cohn-kanade-images" / "S005" / "001"
    (seq / "S005_001_00000004.png").unlink()
    write_image(seq / "S005_001_00000004.jpg")
    records, drops, _ = read_all("ckplus", tmp_path)
    assert Path(records["S005_001_00000004"].path).name == "S005_001_00000004.jpg"
    assert drops == {"no_emotion_label": 1, "bad_label": 1}


def test_images_outside_a_sequence_folder_are_counted_drops(tmp_path):
    """Bug guarded: frames in a folder inside a sequence folder, directly in a subject folder, or beside
    the subject folders were never read and never counted."""
    make_ckplus(tmp_path)
    images = tmp_path / "cohn-kanade-images"
    outside = [write_image(images / "S005" / "001" / "more" / "S005_001_00000006.png"),
               write_image(images / "S005" / "002" / "a" / "b" / "S005_002_00000005.png"),
               write_image(images / "S010" / "S010_001_00000007.png"),
               write_image(images / "cover.jpg")]
    (images / "S010" / "notes.txt").write_text("not an image\n")
    records, drops, items = read_all("ckplus", tmp_path)
    assert len(records) == 6
    assert drops == {"no_emotion_label": 1, "bad_label": 1, "outside_sequence_folder": 4}
    strays = [d for d in items if d.reason == "outside_sequence_folder"]
    assert sorted(d.detail.split(":")[0] for d in strays) == sorted(str(p) for p in outside)
    assert all("cohn-kanade-images/<subject>/<sequence>/" in d.detail for d in strays)
    assert len({d.key for d in strays}) == 4


def _one_sequence_per_code(root: Path) -> None:
    """One labelled sequence for each CK+ emotion code 1..7 (none is Neutral: CK+ labels no sequence so)."""
    for code in range(1, 8):
        subj, seq = f"S{100 + code:03d}", "001"
        for f in range(1, 7):
            write_image(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f:08d}.png", value=40 * f)
        (root / "Emotion" / subj / seq).mkdir(parents=True)
        (root / "Emotion" / subj / seq / f"{subj}_{seq}_00000006_emotion.txt").write_text(f"   {code:.7e}\n")


@pytest.mark.parametrize("example", ["params.yaml", "ferdata prepare"])
def test_the_readmes_seven_class_ckplus_examples_give_seven_learnable_classes(tmp_path, example):
    """README's CK+ examples, `exclude_classes: [Contempt]` with `frames: 3`, gave 6 classes: CK+ has
    no Neutral sequence, so a "7-class" model never saw class 0. The examples now add onset Neutral."""
    import re

    import yaml

    from ferdata.classes import CLASSES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    if example == "params.yaml":
        line = next(x for x in readme.splitlines() if re.match(r"\s*ckplus: \{reader: ckplus", x))
        options = yaml.safe_load(line.strip().split(":", 1)[1])["options"]
    else:
        line = next(x for x in readme.splitlines() if x.startswith("ferdata prepare ckplus"))
        options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in re.findall(r"--option '?([^' ]+)", line))}
    _one_sequence_per_code(tmp_path)
    records, _, _ = read_all("ckplus", tmp_path, options)
    classes = {CLASSES[r.label] for r in records.values()}
    assert len(classes) == 7 and "Contempt" not in classes, (options, sorted(classes))


def test_an_excluded_sequences_onset_frames_are_left_out_with_it(tmp_path):
    """`neutral_frames: 1, exclude_classes: [Contempt]`: the Contempt sequence's onset frame came back
    as a Neutral face (18 of them on real CK+), beside the six basic emotions' onsets."""
    _one_sequence_per_code(tmp_path)           # codes 1..7, one sequence each; code 2 is Contempt (S102)
    records, drops, _ = read_all("ckplus", tmp_path, {"frames": 3, "neutral_frames": 1,
                                                      "exclude_classes": ["Contempt"]})
    neutral = sorted(r.extra["sequence"] for r in records.values() if r.label == 0)
    assert len(neutral) == 6 and "S102_001" not in neutral, neutral
    assert drops["excluded_class"] == 4                      # its 3 peak frames and its onset frame
