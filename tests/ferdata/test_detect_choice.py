"""Which detected face a record gets: the one the dataset's box (or landmarks) marks, not the
largest in the photo. ExpW labels several faces of one photo, each with its own expression."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from ferdata.datasets import open_reader
from ferdata.faces.base import Face, face_in_box
from ferdata.layout import read_faces
from ferdata.records import FaceRecord
from ferdata.stages.detect import DetectParams, run_detect
from tests.fermodels.helpers import REPO

pytestmark = pytest.mark.usefixtures("offline")


def face(x0: float, y0: float, x1: float, y1: float) -> Face:
    return Face((x0, y0, x1, y1), 0.99, np.zeros((5, 2), np.float32))


def test_the_face_centred_in_the_box_and_overlapping_it_most_is_chosen():
    big, small, beside = face(100, 100, 300, 300), face(310, 120, 370, 180), face(500, 100, 600, 200)
    faces = [big, small, beside]
    assert face_in_box(faces, (80, 60, 320, 330)) is big            # a loose box around the big face
    assert face_in_box(faces, (120, 140, 280, 280)) is big          # a tight one
    assert face_in_box(faces, (300, 110, 380, 190)) is small        # the small face, its centre in
    assert face_in_box(faces, (0, 0, 700, 400)) is big              # every centre in: most overlap
    assert face_in_box(faces, (700, 0, 800, 100)) is None           # nothing where the dataset says


@pytest.fixture(scope="module")
def two_face_expw(tmp_path_factory, photos):
    """An ExpW photo with the astronaut at full size (face near x 150-260, y 40-190) and at half
    size to its right (face near x 605-660, y 148-223), each labelled, plus a box on bare wall."""
    root = tmp_path_factory.mktemp("expw")
    astronaut = photos["astronaut"]                                  # 512 x 512
    canvas = np.full((512, 800, 3), 90, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 530:786] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    (root / "image" / "origin").mkdir(parents=True)
    cv2.imwrite(str(root / "image/origin/pair.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    (root / "label").mkdir()
    # name face_id top left right bottom confidence label (ExpW: 3 happy, 5 surprise, 6 neutral)
    (root / "label/label.lst").write_text("pair.jpg 0 30 140 270 200 90.0 3\n"
                                          "pair.jpg 1 140 595 670 230 80.0 5\n"
                                          "pair.jpg 2 400 620 700 500 70.0 6\n")
    return root


def test_each_labelled_face_of_a_photo_gets_its_own_detection(two_face_expw, tmp_path):
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    report = run_detect(open_reader("expw", str(two_face_expw), {}).read(), params, tmp_path / "det")
    rows = {r["record"]["key"]: r for r in read_faces(tmp_path / "det")}
    assert set(rows) == {"pair_0", "pair_1"} and {r["num_faces"] for r in rows.values()} == {2}
    big, small = (rows[k]["face"]["box"] for k in ("pair_0", "pair_1"))
    assert big[2] < 512 and small[0] > 530                           # each in its own half of the photo
    assert (small[2] - small[0]) < 0.7 * (big[2] - big[0])           # the half-size copy's face
    dropped = [json.loads(line) for line in (tmp_path / "det" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["key"], d["reason"]) for d in dropped] == [("pair_2", "no_face_in_box")]
    assert "2 face(s) found, none centred where the dataset marks the face (620, 400, 700, 500)" in \
        dropped[0]["detail"]
    assert report.to_dict()["dropped"] == {"no_face_in_box": 1}


def test_landmarks_mark_the_face_when_the_dataset_gives_no_box(two_face_expw, tmp_path, embedded):
    path = two_face_expw / "image/origin/pair.jpg"
    faces = embedded.detect(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    small = min(faces, key=lambda f: f.area)
    records = [FaceRecord("t", "marked", str(path), 3, "x", landmarks=small.lmk68),
               FaceRecord("t", "unmarked", str(path), 3, "x")]
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    run_detect(records, params, tmp_path / "det")
    rows = {r["record"]["key"]: r["face"]["box"] for r in read_faces(tmp_path / "det")}
    assert rows["marked"][0] > 530 and rows["unmarked"][2] < 512     # marked: the small one; else largest


def test_boxes_that_mark_no_face_in_most_images_are_reported(two_face_expw, tmp_path, caplog):
    """A dataset re-saved at another size keeps its annotation: its boxes then point nowhere."""
    path = str(two_face_expw / "image/origin/pair.jpg")
    records = [FaceRecord("t", f"k{i}", path, 3, "x", box=(700.0 + i, 0.0, 790.0, 60.0)) for i in range(12)]
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    with caplog.at_level("WARNING"):
        report = run_detect([*records, FaceRecord("t", "ok", path, 3, "x", box=(140.0, 30.0, 270.0, 200.0))],
                            params, tmp_path / "det")
    assert report.kept == 1 and report.to_dict()["dropped"] == {"no_face_in_box": 12}
    assert "12 of the 13 faces the dataset marks were found nowhere near" in caplog.text


@pytest.mark.parametrize("angle", [-15, -8, 8, 15])
def test_five_landmarks_mark_their_face_on_turned_and_rotated_faces(embedded, photos, angle):
    """RAF-DB's manual 5 points (eyes, nose, mouth corners) span less than a detector's box; on
    the rotated group photo's turned faces the box centre fell outside their bounds."""
    h, w = photos["t1"].shape[:2]
    rotated = cv2.warpAffine(photos["t1"], cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h),
                             borderMode=cv2.BORDER_REFLECT)
    faces = embedded.detect(rotated)
    assert len(faces) == 6
    for f in faces:
        marked = FaceRecord("t", "k", "x.jpg", 1, "x", landmarks=f.kps5).annotated_box()
        assert face_in_box(faces, marked) is f


def test_a_failing_batch_is_detected_image_by_image_and_told_once(caplog):
    """A batch the backend cannot detect whole is detected one image at a time (an image that fails
    alone becomes its exception, a recorded drop); the batch failure is logged once per process, so
    a batch path that always fails does not pass as a slow run."""
    from ferdata.stages.detect_work import DetectWorker

    class BatchFails:
        name = "stub"

        def detect_batch(self, images, records):
            raise RuntimeError("batch path broken")

        def detect(self, image, record):
            if image.sum() == 0:
                raise ValueError("odd image")
            return [Face(box=(0.0, 0.0, 4.0, 4.0), score=0.9, kps5=np.zeros((5, 2), np.float32))]

    worker = DetectWorker(DetectParams("embedded", "largest", 640, None, None, "unused", 1))
    worker._backend = BatchFails()
    images = [np.ones((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    with caplog.at_level("DEBUG", logger="ferdata.stages.detect_work"):
        first = worker._detect(images, [None, None])
        worker._detect(images, [None, None])
    assert len(first[0]) == 1 and first[0][0].score == 0.9 and isinstance(first[1], ValueError)
    told = [r for r in caplog.records if "batch path broken" in r.getMessage()]
    assert [r.levelname for r in told] == ["WARNING", "DEBUG"]


def test_largest_means_the_largest_area_and_central_the_nearest_centre():
    """Bug guarded: ``largest`` measured by one side (a wide, thin false detection beat a bigger
    square face) and ``central`` with the image's height and width swapped (on a wide picture the
    face left of centre won over the one at the centre)."""
    from ferdata.faces.base import select_face

    wide, square = face(0, 0, 300, 60), face(400, 0, 600, 200)        # areas 18,000 and 40,000
    assert select_face([wide, square], (400, 800, 3), "largest") is square
    middle, left = face(350, 150, 450, 250), face(150, 350, 250, 450)   # centres (400, 200) and (200, 400)
    assert select_face([left, middle], (400, 800, 3), "central") is middle  # image centre (x 400, y 200)


def test_of_faces_centred_in_the_box_the_one_overlapping_it_most_wins_whatever_the_order():
    """Bug guarded: the first face whose centre lies in the dataset's box taken (a small face listed
    first beat the annotated one it sits beside); the overlap (IoU) decides."""
    small, big = face(310, 120, 370, 180), face(100, 100, 300, 300)
    assert face_in_box([small, big], (0, 0, 700, 400)) is big
    assert face_in_box([big, small], (0, 0, 700, 400)) is big


def test_backend_option_replaces_a_datasets_own_backend_and_its_options():
    """`ferdata prepare NAME --backend embedded` over `datasets.NAME.detect: {backend: insightface,
    options: {pack: ...}}` was refused: "face backend 'embedded' takes no option 'pack'"."""
    import copy
    from pathlib import Path

    import yaml

    from ferdata.prepare import resolve_spec
    from ferdata.stages.detect import detect_section

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["datasets"]["sample"]["detect"] = {"backend": "insightface", "options": {"pack": "antelopev2"}}
    detect = detect_section(params, "sample", resolve_spec("sample", params, backend="embedded"))
    assert detect.backend == "embedded" and dict(detect.options) == {}
    same = detect_section(params, "sample", resolve_spec("sample", params, backend="insightface"))
    assert same.backend == "insightface" and dict(same.options) == {"pack": "antelopev2"}


def _params_with_ck() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["ck"] = {"reader": "ckplus", "root": "raw/CK+", "options": {"exclude_classes": ["Contemp"]}}
    return params


def test_an_option_given_replaces_the_entrys_bad_one():
    """`ferdata prepare NAME --option` is over params.yaml's: the entry's value it replaces was refused."""
    from ferdata.prepare import resolve_spec

    spec = resolve_spec("ck", _params_with_ck(), root="/data/CK+", options={"exclude_classes": ["Contempt"]})
    assert spec.options == {"exclude_classes": ["Contempt"]} and spec.root == "/data/CK+"


def test_the_entrys_bad_option_is_still_refused_when_nothing_replaces_it():
    from ferdata.datasets import dataset_spec
    from ferdata.prepare import resolve_spec

    for call in (lambda: resolve_spec("ck", _params_with_ck()), lambda: dataset_spec(_params_with_ck(), "ck")):
        with pytest.raises(ValueError, match="'Contemp' is not a class"):
            call()
