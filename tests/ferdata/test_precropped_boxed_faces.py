"""The precropped backend takes the whole picture as the face. A record whose dataset boxes its face
in a bigger picture (ExpW, AffectNet's CSV) was kept whole when the box held the picture's centre: the
photo, not the face, aligned and trained on (audit h122). It is a counted drop naming the fix."""
from __future__ import annotations

from ferdata.datasets import open_reader
from ferdata.layout import read_faces
from ferdata.stages.detect import DetectParams, run_detect
from tests.ferdata.fixtures_datasets import write_image, write_text


def _detect(tmp_path, backend):
    root = tmp_path / "expw"
    write_image(root / "image" / "origin" / "portrait.jpg", size=(400, 300))      # 300 wide, 400 high
    # name face_id top left right bottom confidence label: a face in the middle, a twelfth of the picture
    write_text(root / "label" / "label.lst", "portrait.jpg 0 150 100 200 250 50.0 3\n")
    params = DetectParams(backend=backend, select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    report = run_detect(open_reader("expw", str(root), {}).read(), params, tmp_path / "det")
    return report, list(read_faces(tmp_path / "det"))


def test_a_face_boxed_in_a_bigger_picture_is_not_kept_whole_by_precropped(tmp_path):
    report, rows = _detect(tmp_path, "precropped")
    assert rows == [] and report.dropped == {"not_a_face_crop": 1}


def test_a_face_boxed_in_a_corner_is_not_a_face_crop_either(tmp_path):
    """A box off the picture's centre was a no_face_in_box drop, and a dataset of them warned of pictures
    resized after annotation, where the fix is a backend that finds faces (audit h125)."""
    root = tmp_path / "expw"
    write_image(root / "image" / "origin" / "corner.jpg", size=(400, 300))
    write_text(root / "label" / "label.lst", "corner.jpg 0 10 10 60 60 50.0 3\n")    # top left right bottom
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    report = run_detect(open_reader("expw", str(root), {}).read(), params, tmp_path / "det")
    assert report.dropped == {"not_a_face_crop": 1}
