"""Self-describing checkpoints and exact resume.

A checkpoint holds the weights plus everything needed to rebuild, resume and audit the run:
model name and kwargs, its card, class names, the training params (and recipe), the datasets
with the sha256 of every shard used, the preprocessing that made the shards (so inference
rebuilds the same sample) and the position in the run (epoch, step, batch within the epoch).
Loaded with ``torch.load(weights_only=True)`` only.

Resume is exact because nothing else carries state: the epoch plan, shuffles, augmentation and
dropout are all seeded from (seed, epoch, step), so restarting at a saved step replays the run.
"""
from __future__ import annotations

import logging
import math
import re
import sys
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ferdata.atomic import atomic_open
from ferdata.classes import class_names
from ferdata.codeclosure import PACKAGES, ROOT, fingerprint
from ferdata.errors import no_memory_for, out_of_memory
from ferdata.layout import GREY, SAMPLE_SETTINGS
from fermodels.checkpoints import FROM_CHECKPOINT, WEIGHT_FILE_KWARGS, WRAPPER_PREFIXES, failed_checksum
from fermodels.ckptdir import BEST, LAST, saved_at
from fermodels.livelog import logged_epochs
from fermodels.registry import create_model, model_kwargs

log = logging.getLogger(__name__)
FORMAT = "fermodels-checkpoint/2"
# ``data`` keys training records only where they apply (fermodels/train.py's _data_record): a checkpoint
# without one is another kind of run (colour faces, no weight file), not one from an earlier version.
DATA_WHERE_THEY_APPLY = (GREY, "weights")
CHECKPOINT_KEYS = ("model", "model_kwargs", "num_classes", "classes", "state_dict")   # what loading needs


def preprocess_record(params: Mapping[str, Any]) -> dict:
    """The align/derive settings of a params file, in the form checkpoints carry them (training
    prefers what the shards record: ``_info.json``'s ``preprocess``, from the align/derive reports)."""
    return {section: {k: params[section][k] for k in keys} for section, keys in SAMPLE_SETTINGS.items()}


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``batch`` batches of ``epoch`` done (0 = the epoch has not started)."""

    epoch: int
    batch: int
    step: int


def save_checkpoint(path: str | Path, *, model: nn.Module, params: Any, optimizer: Any, position: Position,
                    best: dict, data: dict, preprocess: dict, scaler: dict | None = None,
                    resume: dict | None = None) -> None:
    """Write atomically (:class:`ferdata.atomic.atomic_open`: a temp file of its own, fsynced, then
    renamed), so neither a kill, a power cut nor a second writer leaves a truncated checkpoint. ``scaler``:
    the fp16 gradient scaler's state; ``resume``: what the trainer continues from besides weights
    and position (the ranks and steps per epoch the position counts in, partial epoch totals)."""
    p = asdict(params)
    state = {
        "format": FORMAT, "model": p["model"], "model_kwargs": model_kwargs(p["model"], p["model_kwargs"]),
        "num_classes": p["num_classes"], "classes": list(class_names(p["num_classes"])),
        "card": asdict(model.card),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": position.epoch, "batch": position.batch, "step": position.step, "best": dict(best),
        "params": p, "recipe": p.get("recipe"), "datasets": list(p["datasets"]), "data": data,
        "preprocess": dict(preprocess), "torch": str(torch.__version__),
        "scaler": dict(scaler or {}), **(resume or {}),
    }
    path = Path(path)
    try:
        with atomic_open(path) as f:       # a temp file of its own, fsynced, renamed; removed on failure
            torch.save(_interned(state), f)
    except RuntimeError as err:            # torch's account of a failed write ("unexpected pos ...")
        if not isinstance(err.__context__, OSError):
            raise
        cause = err.__context__            # e.g. the disk is full: named, in one line
        raise OSError(cause.errno, f"{cause.strerror} (while writing checkpoint {path})") from err


def _interned(obj: Any) -> Any:
    """``obj`` with every text interned, containers rebuilt, tensors as they are: pickle writes a
    text once per object, so a resumed run (the optimizer's ``"step"`` keys read back from last.pt
    beside its own) wrote other bytes than an uninterrupted one for equal values, and DVC saw two
    outputs. A state dict's ``_metadata`` (module versions) is kept."""
    if type(obj) is str:                                   # sys.intern refuses subclasses (numpy.str_)
        return sys.intern(obj)
    if type(obj) in (dict, OrderedDict):                  # not a Counter or defaultdict: built otherwise
        out = type(obj)((_interned(k), _interned(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = _interned(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


def _starts_as_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _looks_like(path: Path) -> str:
    """What a file that is no torch archive starts as, for the error."""
    from ferdata.io import sniff_format

    with open(path, "rb") as f:
        head = f.read(16)
    kind = sniff_format(head) or ("ONNX or other protobuf" if head[:1] == b"\x08" else "")
    return f"{kind} data" if kind else f"it starts {head[:8]!r}"


def _other_archive(path: Path) -> str:
    """What a torch zip archive that is no weights file holds ("" when it looks like one): a
    TorchScript export (its code and constants) or a pickled model object, which ``weights_only``
    refuses to unpickle."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return "a TorchScript export (`fermodels export` writes these)"
            pickled = next((n for n in names if n.endswith("/data.pkl")), None)
            if pickled is None:
                return "a zip archive that holds no torch data"
            if any(op in z.read(pickled) for op in (b"torch.nn.modules", b"__main__")):
                return "a pickled model object (torch.save(model))"
    except (zipfile.BadZipFile, OSError, KeyError):
        return ""
    return ""


def _first_sentence(text: str, most: int = 160) -> str:
    """The first sentence of an error's message, whole words to ``most`` characters: torch's read
    errors go on to advice about miniz ("... there is a high"), cut mid-sentence before."""
    line = text.strip().split("\n", 1)[0]
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= most else sentence[:most].rsplit(" ", 1)[0] + " ..."


def checkpoint_file(path: str | Path) -> Path:
    """``path`` when a file is there, else the error naming what to give: told by a command before its
    long work (predict walking a folder of photos) as well as by :func:`load_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the .pt file in it (e.g. {path / BEST})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train first (`dvc repro train`)")
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = checkpoint_file(path)
    if bad := failed_checksum(path):
        raise ValueError(f"{path} is a damaged checkpoint: its {bad!r} fails its CRC-32 (torch does not check them); "
                         "copy it again (`dvc pull`, a finished download) or retrain")
    give = "give a training checkpoint such as runs/train/ckpt/best.pt"
    if not _starts_as_zip(path):            # torch.save's format since torch 1.6; anything else is no checkpoint
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (not a torch archive: {_looks_like(path)}); {give}")
    if other := _other_archive(path):       # before torch.load, which hands a TorchScript archive to jit.load
        raise ValueError(f"{path} is {other}, not a training checkpoint; {give} (fermodels loads "
                         "weights without running code from the file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; each one is named below
        if out_of_memory(e):                # the machine's, not the file's: keep the run
            raise no_memory_for(path, e) from e
        first = _first_sentence(str(e)) or type(e).__name__
        raise ValueError(f"{path} is a cut-off or damaged checkpoint (torch could not read it: {first}); copy it "
                         "again (`dvc pull`, a finished download) or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        what = ("a state dict or another program's checkpoint (no 'format' key)" if found is None else
                f"a checkpoint of another format ({found!r}): retrain with this version")
        raise ValueError(f"{path} is not a {FORMAT} checkpoint: {what}; {give}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is a damaged {FORMAT} checkpoint: it lacks {', '.join(missing)}")
    if problem := _class_problem(state["classes"], state["num_classes"]):
        raise ValueError(f"{path} is a damaged or edited {FORMAT} checkpoint: {problem} (predictions would be named "
                         "wrongly); copy it again or retrain")
    return state


def recorded_preprocess(state: dict, path: str | Path) -> dict:
    """The checkpoint's align/derive settings (``preprocess``), which a new face is made into model input with
    (predict) or a deployer is told to make it with (export); one that lacks them (trained before they were
    recorded) is refused: its faces would be made with guessed settings, their scores off without a word."""
    pre = state.get("preprocess") or {}
    if set(pre) != set(SAMPLE_SETTINGS):
        raise ValueError(f"{path} does not record its preprocessing (align/derive settings), without which a new "
                         "face cannot be made into its input as its training faces were; retrain it with the train "
                         "stage (pipeline/train.py), which records them")
    return pre


def _class_problem(classes: object, num_classes: object) -> str:
    """Why a checkpoint's class names cannot name its outputs ("" when they can): one distinct, non-empty
    name per output, in output order."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        return f"num_classes is {num_classes!r}, not a count of 2 or more"
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
        return f"its classes {str(classes)[:120]} are not a list of names"
    if len(classes) != num_classes:
        return f"it names {len(classes)} classes ({', '.join(classes)[:120]}) for {num_classes} outputs"
    if len(set(classes)) != len(classes):
        return f"its class names repeat ({', '.join(classes)[:120]})"
    return ""


# Defaults that changed after checkpoints stored only the keywords given: (model, keyword) -> the
# value such a checkpoint was trained with (checkpoints now store every keyword).
FORMER_DEFAULTS = {("cmnet", "mirror_right_half"): True, ("pcda", "drop"): 0.0, ("pcda", "heatmap_centres"): "cells",
                   ("resnet18_heatmap", "heatmap_centres"): "cells",
                   ("resnet18_heatmap_112", "heatmap_centres"): "cells",
                   ("convcut", "cut_stage"): 3, ("convcut_paper", "cut_stage"): 3}


def built_kwargs(state: dict) -> dict[str, Any]:
    """Every keyword the checkpoint's model is rebuilt with: those it stores, over the defaults it was trained
    with where a default changed since (:data:`FORMER_DEFAULTS`: an old cmnet stores no ``mirror_right_half``
    and is built with True), and the factory's for the rest. What an export's ``model_kwargs`` records."""
    former = {k: v for (m, k), v in FORMER_DEFAULTS.items() if m == state["model"]}
    try:
        return model_kwargs(state["model"], {**former, **state["model_kwargs"]})
    except TypeError as e:                       # a keyword the model's factory does not take
        raise ValueError(f"the checkpoint's {state['model']} was made with settings this version does not know "
                         f"({e}): use the version of the package that trained it, or retrain") from None


def model_from_checkpoint(state: dict) -> nn.Module:
    """Rebuild the model named in a checkpoint (:func:`built_kwargs`) and load its weights strictly (eval
    mode). Weight files it was initialised from (``pretrained`` ...) are not read: the checkpoint holds them."""
    kwargs = {k: FROM_CHECKPOINT if k in WEIGHT_FILE_KWARGS and v else v for k, v in built_kwargs(state).items()}
    bad = [k for k, t in state["state_dict"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"the checkpoint's weights are not finite (NaN or inf in {', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}): its training diverged; use an earlier checkpoint, "
                         "or retrain (lower train.lr, train.amp off)")
    model = create_model(state["model"], num_classes=state["num_classes"], **kwargs)
    weights, taken = _unwrapped(state["state_dict"], set(model.state_dict()))
    if taken:
        log.warning("the checkpoint's weight names all start with %s, the prefix of a model wrapped by %s (saved "
                    "by other code than this trainer): loaded without it", "".join(taken),
                    " in ".join(WRAPPER_PREFIXES[p] for p in taken))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:                    # missing, unexpected or mis-shaped tensors
        detail = " ".join(str(e).split())
        raise ValueError(f"the checkpoint's weights do not fit model {state['model']!r}{_prefixed(weights)} "
                         f"({detail[:300]}{' ...' if len(detail) > 300 else ''}): the checkpoint is damaged "
                         "or was edited") from e
    return model.eval()


def _unwrapped(weights: dict, names: set[str]) -> tuple[dict, list[str]]:
    """``weights`` without the prefixes a wrapped model gives every name (:data:`WRAPPER_PREFIXES`, one in
    another too: ``_orig_mod.module.``), taken off only where every name has it and no name of the model
    (``names``) does; and the prefixes taken off, outermost first."""
    taken: list[str] = []
    while weights:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in weights)
                       and not any(k.startswith(p) for k in names)), None)
        if prefix is None:
            break
        weights = {k[len(prefix):]: v for k, v in weights.items()}
        taken.append(prefix)
    return weights, taken


def _prefixed(weights: dict) -> str:
    """Says how many weight names start with a wrapper's prefix (some, not all: not taken off), which the
    error's list of keys, cut short, may not show; "" when none does."""
    for prefix, wrapper in WRAPPER_PREFIXES.items():
        if n := sum(k.startswith(prefix) for k in weights):
            return f"; {n} of its {len(weights)} weight names start with {prefix!r}, the prefix {wrapper} gives them"
    return ""


RESUME_IGNORES = ("checkpoint_every",)   # train params that shape no weight: changing one still resumes
# train.device as written (auto, cuda, cuda:1): resuming compares the kind it names, data["device"]
DEVICE = ("device",)
# train params that change no batch: the loader workers only make the shuffle streams' batches, so a
# run goes on under another count (train.streams sets the order: another value is another run)
LAYOUT = ("workers",)


def code_fingerprint() -> str:
    """A hash of the code training runs (:func:`ferdata.codeclosure.fingerprint` of ``pipeline/train.py``,
    whose closure the train stage depends on in dvc.yaml; ``fermodels/train.py``'s where the package is
    installed without ``pipeline``). Training records it with the data (``data["code"]``), so a run
    resumes only on the code it started with: DVC re-runs ``train`` after an edit of that code, and
    resuming the finished ``last.pt`` trained nothing (the old weights went on under the new code's
    lock entry). An edit elsewhere (predict, verify, the CLI) still resumes."""
    return fingerprint(ROOT / "pipeline" / "train.py" if "pipeline" in PACKAGES else ROOT / "fermodels" / "train.py")


def resume_state(ckpt_dir: str | Path, params: dict, data: dict, live_dir: str | Path | None = None) -> dict | None:
    """``last.pt`` if it belongs to this exact run (same params, shard hashes and code) and, given
    ``live_dir``, the DVCLive logs there still hold every epoch it finished; else None."""
    path = Path(ckpt_dir) / LAST
    if not path.is_file():
        if (path.parent / BEST).is_file():
            log.warning("%s is an earlier run's, without its last.pt: this run replaces it (copy it first to keep it)",
                        path.parent / BEST)
        return None
    try:
        state = load_checkpoint(path)
    except ValueError as err:              # every later run would stop here too: say how to go on
        raise ValueError(f"{err}; training resumes from {path.name}: delete it to train from the start "
                         "instead") from None
    if state.get("optimizer") is None:
        raise ValueError(f"{path} holds no optimizer state (a copy of best.pt?), so training cannot resume from it: "
                         "delete it to train from the start")
    params, saved = ({k: v for k, v in p.items() if k not in RESUME_IGNORES + LAYOUT + DEVICE}
                     for p in (params, state["params"]))
    if saved != params or state["data"] != data:
        differ = sorted(k for k in {*params, *saved} if params.get(k) != saved.get(k))
        differ += sorted("the training code (data.code)" if k == "code" else f"data.{k}"
                         for k in {*data, *state["data"]} if data.get(k) != state["data"].get(k))
        lacks = sorted(k for k in params if k not in saved)
        lacks += sorted(f"data.{k}" for k in data if k not in state["data"] and k not in DATA_WHERE_THEY_APPLY)
        older = (f"; it is from an earlier version of this package, which did not record {', '.join(lacks)}"
                 if lacks else "")
        log.warning("%s is from another run (it differs in %s%s): starting over, replacing its checkpoints in %s and "
                    "its logs (dvc repro keeps a finished run's checkpoints in DVC's cache, its logs are what git "
                    "has; copy them first to keep them otherwise)", path, ", ".join(differ), older, path.parent)
        return None
    if live_dir is not None:
        done = state["epoch"] + int(state["batch"] >= state.get("epoch_steps", math.inf))
        unlogged = sorted(set(range(done)) - logged_epochs(live_dir))
        if unlogged:       # resuming would leave them out of the logs (and a finished run would write none)
            log.warning("%s has finished %d epoch(s), but %s lacks the logs of epoch(s) %s (removed?): starting "
                        "over, so that the logs cover every epoch", path, done, live_dir, _spans(unlogged))
            return None
    best_epoch, best = state["best"].get("epoch", -1), path.parent / BEST
    best_at = saved_at(best) if best_epoch >= 0 else None
    if best_epoch >= 0 and best.is_file():      # damaged: starting over threw last.pt away, resuming kept it
        damage = ("cannot be read as a checkpoint (cut off or damaged)" if best_at is None else
                  f"is damaged: its {bad!r} fails its CRC-32" if (bad := failed_checksum(best)) else "")
        if damage:
            raise ValueError(f"{best} {damage}, and {path.name} records epoch {best_epoch} as the best, whose weights "
                             f"only {BEST} holds: put back a good copy of {BEST} to resume, or delete {path.name} "
                             f"and {BEST} to train from the start")
    if best_epoch >= 0 and (best_at or (0, -1))[1] != best_epoch:
        log.warning("%s records epoch %d as the best, but %s is %s: starting over, so that best.pt holds the epoch "
                    "that last.pt and the logs choose", path, best_epoch, BEST,
                    "missing" if not best.is_file() else "another epoch's")
        return None
    return state


def other_threads(state: dict, threads: int | None) -> str | None:
    """A warning when a CPU run resumes ``state`` (last.pt) under another number of torch threads
    than saved it: CPU kernels sum in an order set by the thread count, so the weights part from
    the uninterrupted run's (OMP_NUM_THREADS, taskset or a container's CPU quota change it)."""
    saved = state.get("cpu_threads")
    if threads is None or saved is None or saved == threads:
        return None
    return (f"last.pt was trained with {saved} torch CPU thread(s), this run has {threads}: CPU results depend on "
            "the thread count, so from here on it is not the run it would have made (set OMP_NUM_THREADS="
            f"{saved} to continue it exactly)")


def _spans(numbers: list[int]) -> str:
    """Sorted numbers as runs: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def next_position(state: dict, steps_per_epoch: int, world_size: int = 1, streams: int | None = None) -> Position:
    """Where to continue after ``state``: the same epoch mid-way, or the start of the next.

    A batch index mid-epoch counts in the layout that saved it (the global batch is split over
    the ranks, each rank's epoch over its shuffle streams), so it cannot be continued under another
    number of ranks or ``streams`` (None: the saved number): that is refused; from an epoch's end
    the next one starts under any, with a warning (the epochs are laid out otherwise from there).
    ``streams`` is the number an epoch is cut into (:func:`fermodels.epochplan.stream_count`, from
    ``train.streams`` and the rank's share of the epoch), as ``last.pt`` records it. The number of
    loader workers lays nothing out (:func:`fermodels.epochplan.assign_streams`): a run continues
    under any."""
    saved = (state.get("world_size", world_size), state.get("streams", streams))
    now = (world_size, saved[1] if streams is None else streams)
    if _layout(saved, steps_per_epoch) != _layout(now, steps_per_epoch):
        was, will = (f"{r} rank(s) x {s} shuffle stream(s)" for r, s in (saved, now))
        if state["batch"] < state.get("epoch_steps", 0):
            raise ValueError(f"last.pt was saved by {was} in the middle of epoch {state['epoch']} (batch "
                             f"{state['batch']}); resume it with the same numbers (torchrun's --nproc_per_node, "
                             f"train.streams), or delete last.pt to start over with {will}")
        log.warning("resuming a run saved by %s with %s: from here on it is not the run %s would have made",
                    was, will, was)
        return Position(state["epoch"] + 1, 0, state["step"])
    if state["batch"] >= steps_per_epoch:
        return Position(state["epoch"] + 1, 0, state["step"])
    return Position(state["epoch"], state["batch"], state["step"])


def _layout(ranks_streams: tuple[int, int | None], steps_per_epoch: int) -> tuple[int, int | None]:
    """(ranks, shuffle streams) as an epoch is laid out: 0 (a version's in-process loader) reads as
    one, and no more streams than a rank has batches (:func:`fermodels.epochplan.plan_epoch`)."""
    ranks, streams = ranks_streams
    return ranks, None if streams is None else max(1, min(streams, steps_per_epoch))
