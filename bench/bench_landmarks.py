"""Where the embedded backend starts dlib's 68-point predictor: RetinaFace's box, the box placed
by RetinaFace's 5 keypoints (``ferdata.faces.embedded.dlib_box``, what the backend uses), and
dlib's own HOG detector's box (the convention the predictor was trained on), side by side.

Faces: the photos that ship inside packages (scikit-image's astronaut, matplotlib's Grace Hopper,
insightface's six-face group photo) with mirrors and +-8 / +-15 degree rotations, and the LFW
subset's 100 faces (8x upscaled). Error: the mean distance between the 5 points taken from dlib's
68 (eye centres, nose tip, mouth corners) and RetinaFace's 5 keypoints, in eyes-to-mouth distances
(two models agreeing, not ground truth; dlib's own boxes give the floor). The script also refits
``dlib_box``'s constants on the faces where the HOG detector fires.

``python bench/bench_landmarks.py [--quick]`` (10-15 s on 2 cores; ``--quick``: the group photo only).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))                  # this checkout's ferdata, as the other benchmarks

from ferdata.faces.embedded import EmbeddedBackend, dlib_box  # noqa: E402
from ferdata.geometry import five_from_68  # noqa: E402


def package_faces(quick: bool) -> dict[str, np.ndarray]:
    """RGB pictures by name (the group photo alone when ``quick``)."""
    import matplotlib.cbook
    import skimage.data

    group = Path(importlib.util.find_spec("insightface").submodule_search_locations[0]) / "data/images/t1.jpg"
    photos = {"t1": cv2.cvtColor(cv2.imread(str(group)), cv2.COLOR_BGR2RGB)}
    if quick:
        return photos
    grace = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photos.update(astronaut=skimage.data.astronaut(), grace_hopper=cv2.cvtColor(cv2.imread(grace), cv2.COLOR_BGR2RGB))
    out = {}
    for name, rgb in photos.items():
        h, w = rgb.shape[:2]
        out[name], out[f"{name}_mirror"] = rgb, np.ascontiguousarray(rgb[:, ::-1])
        for angle in (-15, -8, 8, 15):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            out[f"{name}_rot{angle}"] = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    lfw = np.clip(np.rint(skimage.data.lfw_subset()[:100] * 255), 0, 255).astype(np.uint8)
    for i, grey in enumerate(lfw):
        up = cv2.copyMakeBorder(cv2.resize(grey, (200, 200), interpolation=cv2.INTER_CUBIC), 50, 50, 50, 50,
                                cv2.BORDER_REPLICATE)
        out[f"lfw{i}"] = np.repeat(up[..., None], 3, -1)
    return out


def five_point_error(lmk68: np.ndarray, kps5: np.ndarray) -> float:
    k = kps5.astype(np.float64)
    eyes_to_mouth = np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2)
    return float(np.linalg.norm(five_from_68(lmk68) - k, axis=1).mean() / eyes_to_mouth)


def hog_box(boxes: list, kps5: np.ndarray, face_box: np.ndarray) -> np.ndarray | None:
    """The HOG detection centred inside RetinaFace's box nearest its nose keypoint."""
    inside = [b for b in boxes if face_box[0] <= (b[0] + b[2]) / 2 <= face_box[2]
              and face_box[1] <= (b[1] + b[3]) / 2 <= face_box[3]]
    return min(inside, key=lambda b: np.hypot((b[0] + b[2]) / 2 - kps5[2, 0], (b[1] + b[3]) / 2 - kps5[2, 1]),
               default=None)


def measure(pictures: dict[str, np.ndarray]) -> dict:
    import dlib

    backend, hog = EmbeddedBackend(), dlib.get_frontal_face_detector()
    backend.load()
    errors: dict[str, list[float]] = {"retinaface box": [], "keypoint box": [], "dlib HOG box": []}
    fit_rows = []
    for rgb in pictures.values():
        blob, scale = backend.prepare(rgb)
        loc, conf, pts = backend.infer(blob)
        boxes, _, kpss = backend.decode(loc[0], conf[0], pts[0], blob.shape[3], blob.shape[2], scale)
        hogs = [np.array([d.left(), d.top(), d.right(), d.bottom()], np.float64) for d in hog(rgb, 1)]
        for box, k in zip(boxes, kpss):
            errors["retinaface box"].append(five_point_error(backend.landmarks(rgb, box), k))
            errors["keypoint box"].append(five_point_error(backend.landmarks(rgb, dlib_box(k)), k))
            own = hog_box(hogs, k, box)
            errors["dlib HOG box"].append(np.nan if own is None else five_point_error(backend.landmarks(rgb, own), k))
            if own is not None:
                fit_rows.append((k.astype(np.float64), own))
    return {"faces": len(errors["retinaface box"]), "with_hog": len(fit_rows),
            "errors": {name: np.asarray(v) for name, v in errors.items()}, "fit": refit(fit_rows)}


def refit(rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``dlib_box``'s constants from the HOG boxes: the centre's fraction of the way from the eyes
    to the mouth, and side = a x eyes-to-mouth + b x interocular (least squares)."""
    if not rows:
        return {}
    frac, dists, sides = [], [], []
    for k, hb in rows:
        eyes, mouth = (k[0] + k[1]) / 2, (k[3] + k[4]) / 2
        v = mouth - eyes
        centre = np.array([(hb[0] + hb[2]) / 2, (hb[1] + hb[3]) / 2])
        frac.append(float((centre - eyes) @ v / (v @ v)))
        dists.append((np.linalg.norm(v), np.linalg.norm(k[1] - k[0])))
        sides.append(((hb[2] - hb[0]) + (hb[3] - hb[1])) / 2)
    (a, b), *_ = np.linalg.lstsq(np.asarray(dists), np.asarray(sides), rcond=None)
    return {"centre_fraction": float(np.mean(frac)), "side_per_eyes_to_mouth": float(a),
            "side_per_interocular": float(b)}


def summarise(errors: np.ndarray) -> dict[str, float]:
    e = errors[~np.isnan(errors)]
    return {"mean": float(e.mean()), "p90": float(np.percentile(e, 90)), "max": float(e.max()),
            "over_0.25": int((e > 0.25).sum())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the group photo only (smoke test)")
    args = ap.parse_args(argv)
    m = measure(package_faces(args.quick))
    stats = {name: summarise(e) for name, e in m["errors"].items()}
    if args.quick:
        print("--quick: the group photo only, a smoke test: n/a, these figures judge nothing")
    print(f"{m['faces']} faces ({m['with_hog']} also found by dlib's HOG detector); 5-point error in "
          "eyes-to-mouth distances")
    print(f"{'dlib started from':18s} {'mean':>7s} {'p90':>7s} {'max':>7s} {'> 0.25':>7s}")
    for name, s in stats.items():
        print(f"{name:18s} {s['mean']:7.3f} {s['p90']:7.3f} {s['max']:7.3f} {s['over_0.25']:7d}")
    if m["fit"]:
        print("refit on the HOG boxes: centre {centre_fraction:.3f} of eyes -> mouth, side {side_per_eyes_to_mouth:.3f}"
              " x eyes-to-mouth + {side_per_interocular:.3f} x interocular".format(**m["fit"]))
    old, new = stats["retinaface box"], stats["keypoint box"]
    ratios = {"mean keypoint / retinaface": new["mean"] / old["mean"],
              "max keypoint / retinaface": new["max"] / old["max"]}
    for name, r in ratios.items():
        print(f"ratio {name}: {r:.2f}")
    return {"stats": stats, "fit": m["fit"], "ratios": ratios, "faces": m["faces"]}


if __name__ == "__main__":
    main()
