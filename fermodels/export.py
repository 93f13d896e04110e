"""Export a trained model to ONNX and TorchScript, with the metadata needed to feed it.

The exported graph takes the model's fields as positional float32 tensors in *pixel* units
(what the loader decodes): ``image`` (B, 3, S, S) RGB 0..255, ``left``/``right`` (B, 3, S, S/2),
``heatmap`` (B, 1, S/4, S/4) 0..255, ``lmk`` (B, 68, 2) input pixels; normalisation (the card's
mean/std) happens inside, so users only align, resize and stack. Outputs: ``logits`` and
``probs``. ``<name>.json`` beside the files records input names/shapes, mean/std, class names, the
align/derive settings, and how a photo's face becomes each input without this package (the
5-point template, the resizing, halves, landmarks, heatmap; :mod:`fermodels.predict` does it here).
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ferdata.atomic import atomic_write_text, fsync_dir, held_folder, remove_unlocked, writable_folder
from ferdata.geometry import FLIP_68, template
from ferdata.tario import sha256_file
from fermodels.modelinput import normalise, pixel_affine
from fermodels.runstate import built_kwargs, load_checkpoint, model_from_checkpoint, recorded_preprocess

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
OPSET = 17
PARITY_TOLERANCE = 1e-4      # max |probability| (or relative logit) difference an export may have from PyTorch


def _checked_inputs(inputs: List[Tensor], names: List[str], shapes: List[List[int]]) -> List[Tensor]:
    """``inputs`` as they are, each of shape [batch] + its ``shapes`` entry with the first input's batch, or an
    error naming the input. Scripted (:func:`checked_inputs`), so a traced TorchScript graph keeps the check:
    the model's own checks (:func:`fermodels.models.common.require`) are Python, gone from the trace, and a CNN
    runs on a face of any size."""
    batch = inputs[0].size(0)
    for i in range(len(inputs)):
        got = inputs[i].size()
        if len(got) != len(shapes[i]) + 1 or got[1:] != shapes[i] or got[0] != batch:
            raise ValueError("input " + names[i] + " is " + str(got) + ", not [batch] + " + str(shapes[i])
                             + " with the batch of input " + names[0] + " (" + str(batch) + "): see the "
                             "export's .json (inputs, input_order)")
    return inputs


@functools.cache
def checked_inputs():
    """:func:`_checked_inputs` scripted (once, when a graph is first traced: it reads the source)."""
    return torch.jit.script(_checked_inputs)


class ExportWrapper(nn.Module):
    """Positional pixel-space inputs -> (logits, probabilities), normalising inside. ``check_shapes``: each
    input's shape is checked inside the graph (:func:`checked_inputs`; set while tracing TorchScript, whose
    graph would otherwise run on inputs of any size; ONNX Runtime checks an ONNX graph's declared shapes)."""

    check_shapes = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.card = model, model.card
        self.fields = tuple(model.card.fields)
        self.shapes = [shape[1:] for shape in input_shapes(model.card, 1).values()]
        # Buffers, not constants made in forward: a traced graph moved to a GPU takes them along.
        scale, shift = pixel_affine(model.card)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.eval()      # the ONNX exporter restores the wrapper's mode afterwards: it must be eval

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        if self.check_shapes:
            inputs = tuple(checked_inputs()(list(inputs), list(self.fields), self.shapes))
        batch = normalise(dict(zip(self.fields, inputs)), self.card, affine=(self.scale, self.shift))
        logits = self.model(batch)["logits"].float()
        return logits, logits.softmax(-1)


def input_shapes(card, batch: int) -> dict[str, list[int]]:
    s = card.input_size
    shapes = {"image": [batch, 3, s, s], "left": [batch, 3, s, s // 2], "right": [batch, 3, s, s // 2],
              "heatmap": [batch, 1, s // 4, s // 4], "lmk": [batch, 68, 2]}
    return {f: shapes[f] for f in card.fields}


def example_inputs(card, batch: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
    """Plausible pixel-space inputs for tracing and parity checks."""
    from fermodels.examples import synthetic_landmarks

    g = torch.Generator().manual_seed(seed)
    out = []
    for field, shape in input_shapes(card, batch).items():
        if field == "lmk":
            out.append(synthetic_landmarks(card.input_size)[None].repeat(batch, 1, 1)
                       + torch.randn(*shape, generator=g))
        else:
            out.append(torch.rand(*shape, generator=g) * 255.0)
    return tuple(out)


INPUT_RANGES = {"image": "0..255 RGB", "left": "0..255 RGB", "right": "0..255 RGB", "heatmap": "0..255, one channel",
                "lmk": "(x, y) in the input's pixels (input_size x input_size), pixel centres at integers"}


def metadata(state: dict, card, files: dict[str, str]) -> dict:
    return {
        # what the graph was built with: an older checkpoint's stored keywords leave out defaults changed since
        "format": "fermodels-export/1", "model": state["model"], "model_kwargs": built_kwargs(state),
        "classes": list(state["classes"]), "input_size": card.input_size, "fields": list(card.fields),
        "inputs": {f: {"shape": ["batch", *shape[1:]], "dtype": "float32", "range": INPUT_RANGES[f]}
                   for f, shape in input_shapes(card, 1).items()},
        "input_order": list(card.fields),   # the TorchScript graph takes them positionally, in this order
        "outputs": {"logits": ["batch", len(state["classes"])], "probs": ["batch", len(state["classes"])]},
        "normalisation": {"mean": list(card.mean), "std": list(card.std), "applied": "inside the graph"},
        "preprocess": state.get("preprocess", {}),
        "alignment": alignment(state.get("preprocess", {}), card, (state.get("data") or {}).get("face_backends")),
        "datasets": state.get("datasets", []), "best": state.get("best", {}), "files": files, "opset": OPSET,
        # false: best's scores are another epoch's weights or the weight average's (a last.pt), not these
        "best_scores_these_weights": scores_these_weights(state),
        # false: a face's scores depend on the other faces in its batch; run such a model one face at a time
        "per_sample": card.per_sample,
        # the face backends that found the training faces (samples each): find new faces the same way
        "face_backends": (state.get("data") or {}).get("face_backends", {}),
        "face_backend_options": (state.get("data") or {}).get("face_backend_options", {}),
        "flip_tta": flip_tta(card),
        "provenance": provenance(state),
        # every training face was grey (absent: a model trained on colour faces); how predict serves it
        **({"grey_faces": True, "grey": GREY_RULE} if (state.get("data") or {}).get("grey_faces") is True else {}),
    }


def scores_these_weights(state: dict) -> bool:
    """Whether the checkpoint's ``best`` scores its own weights: a best.pt's are; a last.pt holds the raw weights of
    the epoch it stopped at, its ``best`` the best epoch's scores, of the weight average when there is one (``ema``).
    True for a ``best`` naming no epoch (nothing scored)."""
    best = state.get("best") or {}
    return "epoch" not in best or (best["epoch"] == state.get("epoch") and "ema" not in state)


GREY_RULE = ("every training face was grey (R = G = B), found and warped from a grey picture: ferdata predict turns "
             "the picture grey, cv2.cvtColor RGB2GRAY (BT.601 luma, OpenCV's fixed-point weights) replicated to 3 "
             "channels, before the face backend finds its faces and keypoints (found on the colours, they sit a few "
             "pixels elsewhere, which moves the crop and the scores) and before the warp (each reduced copy the crop "
             "is warped from), then aligns, stores and feeds the face as for any model")


def flip_tta(card) -> dict:
    """How ``ferdata predict --flip-tta`` mirrors a face's inputs (:func:`fermodels.augment.hflip_batch`):
    a deployer averaging with the mirrored face needs the halves swapped and the landmarks re-indexed."""
    fields = set(card.fields)
    out = {"average": "the mean of the face's probabilities and its mirrored inputs' probabilities",
           "image": "flipped left-right"}
    if "heatmap" in fields:
        out["heatmap"] = "flipped left-right"
    if {"left", "right"} & fields:
        out["halves"] = "swapped: the mirrored face's left is the right input, its right the left input (no flip)"
    if "lmk" in fields:
        out["lmk"] = "x -> input_size - 1 - x, then point i of the mirrored face is point lmk_order[i]"
        out["lmk_order"] = FLIP_68.tolist()
    return out


def provenance(state: dict) -> dict:
    """Which code and data made the checkpoint (what it records), and the package that exported it: two
    exports of other models, data or preprocessing code differ here even where their prose reads the same."""
    from ferdata import __version__

    data = state.get("data") or {}
    return {"package_version": __version__, "torch": state.get("torch"), "training_code": data.get("code"),
            "epoch": state.get("epoch"), "recipe": state.get("recipe"),
            "shards": {split: data[split] for split in ("train", "val") if split in data}}


LANDMARK_KEYPOINTS = ("the eye centres (the means of iBUG-68 points 36-41 and 42-47), the nose tip (30) and the "
                      "mouth corners (48, 54) of the face's 68 landmarks: most training faces were aligned by their "
                      "dataset's own landmarks, these five of 68 or 5 drawn by hand at those places (RAF-DB's, "
                      "within about 1 px of 112); a detector's own 5 keypoints (RetinaFace's, SCRFD's) sit a few "
                      "pixels elsewhere in the crop (3.6 px of 112 on average), which moves the scores")


def alignment(preprocess: dict, card, face_backends: dict | None = None) -> dict:
    """How a photo's face becomes the graph's ``image`` without this package: the 5-point template
    the training crops were warped to, which 5 points of a face were warped to it (``face_backends``, the
    checkpoint's: all ``annotations``, the five points of 68 landmarks), and how a crop is brought to the
    model's input size."""
    from fermodels.predictor import training_keypoints

    if "align" not in preprocess:
        log.warning("the checkpoint records no align/derive settings (trained before they were recorded): "
                    "the export's alignment section is empty")
        return {}
    size, padding = preprocess["align"]["size"], preprocess["align"]["padding"]
    out = {
        "keypoints": ["eye, image left", "eye, image right", "nose tip", "mouth corner, image left",
                      "mouth corner, image right"],
        # full precision: rounded to 1e-4 px (a padded or 128-based template), crops moved by a level here and
        # there, which the crop's JPEG made 3 (probabilities 1e-3 apart)
        "template": [[float(v) for v in point] for point in template(size, padding)],
        "keypoints_from": (LANDMARK_KEYPOINTS if training_keypoints(face_backends) == "landmarks" else
                           "the face detector's own 5 keypoints (face_backends names the detector)"),
        "crop_size": size,
        "crop": "least-squares similarity (rotation, uniform scale, shift) taking the 5 keypoints (in image pixels, "
                "rounded to 1/1000 px as the detect stage stores them, then, mapped into the picture the face is "
                "warped from, held as float32) to the template; "
                "warpAffine to crop_size x crop_size, bilinear, black border (the edge replicated "
                "for datasets read pre-cropped: the template then maps pixel centres, "
                "(t + 0.5) * side / crop_size - 0.5, i.e. a resize). "
                "A face with more than twice the crop's resolution is warped from the image first shrunk by the "
                "largest r in 2, 4, 8 that keeps it at least crop_size (the 5 keypoints' RMS distance from their "
                "centre, divided by r, at least the template's), not from the full image, which one warp aliases: a "
                "JPEG file decoded at 1/r by libjpeg (OpenCV IMREAD_REDUCED_COLOR_r; a JPEG whose EXIF orientation "
                "turns or mirrors it (2-8) at half that r, again until r divides both its stored sides, so the "
                "partial last block stays at the far edge; a JPEG over 40 million pixels always at the least r in "
                "2, 4, 8 that brings it under, whatever its faces' size), any other picture (PNG, "
                "a video frame) as ceil(h/r) x ceil(w/r) means of r x r blocks, the last ones padded by repeating "
                "the edge, each mean rounded to a whole level as OpenCV's INTER_AREA resize rounds it: half up at "
                "r = 2, half to even at r = 4 and 8 (cv2.resize of the padded picture to 1/r, INTER_AREA, is this "
                "exactly); points map as (p + 0.5) / r - 0.5. Pictures are decoded upright (EXIF orientation "
                "applied) and transparency flattened onto black",
        "resize": "none" if card.input_size == size else
                  f"{size} -> {card.input_size}: pixel centres aligned, OpenCV INTER_LINEAR when enlarging and "
                  "INTER_AREA when shrinking, on the uint8 crop (rounded), as the loader resized for training on "
                  "a CPU (on a GPU the enlargement ran in float, within one level of it)",
    }
    if framed := dataset_framed(face_backends):
        out["framing"] = framed
    derive_q = (preprocess.get("derive") or {}).get("jpeg_quality")
    if (align_q := preprocess["align"].get("jpeg_quality")) is not None:
        halves = f" (the halves from JPEGs of quality {derive_q})" if derive_q is not None else ""
        out["stored"] = (f"training read each crop back from a JPEG of quality {align_q}{halves}: encode and decode "
                         "them so too for the exact training inputs (ferdata predict does); the raw crop differs "
                         "from them by that JPEG error. The JPEGs are baseline, libjpeg's standard (IJG) tables "
                         "scaled to that quality, 4:2:0 chroma subsampling (OpenCV imencode's and Pillow's default; "
                         "an encoder set to 4:4:4 gives pixels tens of levels away), read back by libjpeg with its "
                         "default (islow) DCT and smooth chroma upsampling (OpenCV imdecode, Pillow)")
        out["jpeg"] = {"quality": align_q, "halves_quality": derive_q, "chroma_subsampling": "4:2:0",
                       "tables": "IJG standard, scaled by quality", "encoder": "OpenCV imencode (libjpeg-turbo)"}
    if {"left", "right"} & set(card.fields):
        out["halves"] = ("from the crop as read back from its JPEG ('stored'): left = crop[:, :W/2], right = "
                         "crop[:, W/2:] flipped left-right (W: the crop's side), each JPEG-encoded again at the "
                         "halves' quality and read back, then resized as the image, to half its width")
    if "lmk" in card.fields:
        out["lmk"] = ("the 68 iBUG landmarks mapped into the crop by the same similarity, then to the input size: "
                      "(p + 0.5) * input_size / crop_size - 0.5")
    if "heatmap" in card.fields:
        out["heatmap"] = ("on a derive.heatmap_size grid over the crop (cell (i, j) centred at crop pixel "
                          "((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5), s = crop_size / heatmap_size): the maximum "
                          "over the 68 landmarks of exp(-d^2 / (2 derive.heatmap_sigma^2)), d in cells, times 255, "
                          "rounded; resized as the image, to a quarter of its side")
    return out


def dataset_framed(face_backends: dict | None) -> str | None:
    """For a model most of whose training faces were a dataset's own crops (``precropped``: FERPlus's, RAF-DB's
    aligned pictures), what ``ferdata predict`` warns of: those were resized whole, framed as the dataset cut them,
    not warped to the template a new photo's face is warped to; else None."""
    from fermodels.predictor import dataset_crops

    if not (whole := dataset_crops(face_backends)):
        return None
    return (f"most training faces were the dataset's own crops ({', '.join(whole)}), each resized whole to crop_size "
            "(the edge replicated), framed as the dataset cut them: a new photo's face warped to the template is "
            "framed otherwise, which the model never saw; feed it faces cropped as those datasets crop them, "
            "resized so, for scores like its validation's")


def export_model(checkpoint: str | Path, out_dir: str | Path, formats: Sequence[str] = FORMATS,
                 name: str | None = None, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Write ``<name>.onnx`` / ``<name>.ts`` and ``<name>.json``; returns the metadata.

    The graphs and the ``.json`` (which records the differences under ``parity``) are written into a
    hidden folder inside ``out_dir`` and checked against PyTorch there (:func:`parity`); only graphs
    within ``tolerance`` take the place of an earlier export of this name (:func:`_swap_in`: its
    ``.json`` and graphs, one of a format not exported now too). A graph that fails the check, an
    error or Ctrl-C leave ``out_dir`` as it was: no file under a final name that should not be used.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export formats {sorted(unknown)}; known: {', '.join(FORMATS)}")
    if not formats:
        raise ValueError("no export format left (--no-onnx and --no-torchscript together): keep one")
    writable_folder(Path(out_dir), "export")     # named, not the hidden staging folder the export writes in first
    state = load_checkpoint(checkpoint)
    recorded_preprocess(state, checkpoint)       # the .json's alignment: how to make the graph's inputs
    if not scores_these_weights(state):
        log.warning("%s holds the raw weights of epoch %s, not the ones its best scores (epoch %s%s): the export's "
                    "best_scores_these_weights is false; export best.pt for the validated weights", checkpoint,
                    state.get("epoch"), (state.get("best") or {}).get("epoch"),
                    ", their average" if "ema" in state else "")
    wrapper = ExportWrapper(model_from_checkpoint(state))
    card, name = wrapper.card, name or state["model"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (*(SUFFIX[f] for f in formats), ".json"):         # told before the tracing, not after it
        if (out / f"{name}{suffix}").is_dir():
            raise IsADirectoryError(f"{out / f'{name}{suffix}'} is a folder, where the export writes its {suffix} "
                                    "file: move it away, or export into another folder")
    remove_unlocked(out.glob(f"{glob.escape(f'.{name}.export-')}*"))     # what a killed export left
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}.export-", ignore_cleanup_errors=True) as staging:
        # ours while it works (another export of this name, removing leftovers, may have taken it)
        with held_folder(staging, f"another export of {name} into {out} is running: wait for it, or export "
                                  "into another folder"):
            staging = Path(staging)
            files, diffs = _checked_graphs(wrapper, checkpoint, staging, out, name, formats, tolerance)
            meta = {**metadata(state, card, files), "parity": {fmt: float(f"{d:.3g}") for fmt, d in diffs.items()}}
            # a graph copied beside another export's .json, or the checkpoint it came from, is told by its hash
            meta["sha256"] = {"checkpoint": sha256_file(checkpoint),
                              **{fmt: sha256_file(staging / f) for fmt, f in files.items()}}
            atomic_write_text(staging / f"{name}.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
            _swap_in(staging, out, name, [*files.values(), f"{name}.json"])
    log.info("exported %s to %s (%s)", state["model"], out, ", ".join(files))
    return meta


def _swap_in(staging: Path, out: Path, name: str, new: list[str]) -> None:
    """Move the files ``new`` (the ``.json`` last) from ``staging`` to ``out``, in place of the earlier export
    of ``name`` there, whose files (its ``.json`` first, a graph of a format not exported now too) are moved
    aside before: an error or Ctrl-C on the way moves every file back, so ``out`` holds the whole earlier
    export or the whole new one. A process killed on the way (SIGKILL, a power cut) leaves graphs without a
    ``.json`` (no export) and the earlier files in ``.<name>.replaced-*``; so does a move back that fails."""
    old = [f for f in (f"{name}.json", *(f"{name}{s}" for s in SUFFIX.values())) if (out / f).is_file()]
    aside = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}.replaced-"))
    moves = [*((out / f, aside / f) for f in old), *((staging / f, out / f) for f in new)]
    done: list[tuple[Path, Path]] = []
    try:
        for src, dst in moves:
            os.replace(src, dst)
            done.append((src, dst))
    except BaseException as err:
        if stuck := _moved_back(done):
            err.add_note(f"export: {stuck} could not be moved back: the earlier export's files are in {aside}")
            raise
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(out)
    for f in sorted(set(old) - set(new)):
        log.info("export: removed %s (an earlier export's)", out / f)


def _moved_back(done: list[tuple[Path, Path]]) -> str:
    """Undo the renames ``done`` (src -> dst), last first; the first that fails ("" when none did)."""
    for src, dst in reversed(done):
        try:
            os.replace(dst, src)
        except BaseException:           # a second Ctrl-C too: the earlier export's files stay where they are
            return str(dst)
    return ""


def _checked_graphs(wrapper: ExportWrapper, checkpoint: str | Path, staging: Path, out: Path, name: str,
                    formats: Sequence[str], tolerance: float) -> tuple[dict[str, str], dict[str, float]]:
    """Write the graphs into ``staging`` and check them against PyTorch (:func:`parity`): one not within
    ``tolerance`` raises. Returns {format: file name} and {format: difference}."""
    files = _write_graphs(wrapper, staging, name, formats)
    diffs = parity(staging, checkpoint, name, formats=formats, wrapper=wrapper)
    for fmt, diff in diffs.items():
        if not diff <= tolerance:                                   # NaN too
            raise RuntimeError(f"the exported {fmt} graph's outputs differ from PyTorch's by {diff:.2e} "
                               f"(probabilities, or logits over their scale; more than {tolerance:g}): not "
                               f"written to {out / files[fmt]}")
    return files, diffs


def _write_graphs(wrapper: ExportWrapper, folder: Path, name: str, formats: Sequence[str]) -> dict[str, str]:
    """Trace ``wrapper`` into ``folder``; returns {format: file name}."""
    card, example, files = wrapper.card, example_inputs(wrapper.card), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, torch.jit.TracerWarning))
        if "onnx" in formats:
            files["onnx"] = f"{name}{SUFFIX['onnx']}"
            torch.onnx.export(wrapper, example, str(folder / files["onnx"]), dynamo=False, opset_version=OPSET,
                              input_names=list(card.fields), output_names=["logits", "probs"],
                              dynamic_axes={n: {0: "batch"} for n in (*card.fields, "logits", "probs")})
        if "torchscript" in formats:
            files["torchscript"] = f"{name}{SUFFIX['torchscript']}"
            wrapper.check_shapes = True         # kept in the graph (scripted): the model's own checks are not
            try:
                traced = torch.jit.trace(wrapper.eval(), example, check_trace=False)
            finally:
                del wrapper.check_shapes
            torch.jit.save(traced, str(folder / files["torchscript"]))
    return files


def parity(out_dir: str | Path, checkpoint: str | Path, name: str | None = None, batch: int = 3,
           seed: int = 1, formats: Sequence[str] = FORMATS, wrapper: ExportWrapper | None = None) -> dict[str, float]:
    """How far each exported file of ``formats`` is from PyTorch on fresh inputs (a batch size
    other than the traced one): the larger of the max |probability| difference and the max |logit|
    difference over the logits' scale (max(1, max |logit|)), which a saturated model's
    probabilities (all 0 or 1) would hide. ``wrapper``: the checkpoint's model already built (the
    export's own), else it is loaded from ``checkpoint``."""
    if wrapper is None or name is None:
        state = load_checkpoint(checkpoint)
        wrapper, name = wrapper or ExportWrapper(model_from_checkpoint(state)), name or state["model"]
    inputs = example_inputs(wrapper.card, batch, seed)
    with torch.no_grad():
        logits, probs = (t.numpy() for t in wrapper(*inputs))
    if not (np.isfinite(probs).all() and np.isfinite(logits).all()):
        raise RuntimeError(f"{checkpoint}'s model gives non-finite outputs on the parity inputs: nothing "
                           "to check the exports against; do not use them")
    scale = max(1.0, float(abs(logits).max()))

    def distance(theirs: Sequence[np.ndarray]) -> float:
        return max(float(abs(theirs[1] - probs).max()), float(abs(theirs[0] - logits).max()) / scale)

    diffs: dict[str, float] = {}
    onnx_path, ts_path = (Path(out_dir) / f"{name}{SUFFIX[f]}" for f in FORMATS)
    if "onnx" in formats and onnx_path.is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        feed = {f: x.numpy() for f, x in zip(wrapper.fields, inputs)}
        diffs["onnx"] = distance(session.run(["logits", "probs"], feed))
    if "torchscript" in formats and ts_path.is_file():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            diffs["torchscript"] = distance([t.numpy() for t in torch.jit.load(str(ts_path))(*inputs)])
    return diffs


def export_command(checkpoint: Path, out: Path, onnx: bool = True, torchscript: bool = True) -> None:
    """Export CHECKPOINT to OUT/<model>.onnx and .ts with OUT/<model>.json (inputs, classes,
    normalisation, preprocessing), and check both against PyTorch."""
    import typer

    formats = [f for f, on in (("onnx", onnx), ("torchscript", torchscript)) if on]
    meta = export_model(checkpoint, out, formats)
    for fmt, diff in meta["parity"].items():
        typer.echo(f"{fmt}: {out / meta['files'][fmt]}  parity {diff:.2e} (max |p - p_torch|, or |logit| difference "
                   "over the logits' scale)")
