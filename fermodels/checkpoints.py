"""Load published pretrained checkpoints into this package's backbones, loudly.

Each *layout* (chosen by name, never guessed) maps a checkpoint's key names onto the names of
one of the trunks in :mod:`fermodels.models.backbones`:

=======================  ===========================================================  ==========================
layout                   checkpoint                                                   target module
=======================  ===========================================================  ==========================
``msceleb_resnet18``     DAN/CMNet/PCNN ``resnet18_msceleb.pth`` (``state_dict``,       :class:`ResNet18Trunk`
                         torchvision keys incl. a 1000-way ``fc``); torchvision files
``ir50``                 face.evoLVe ``backbone_ir50_ms1m_epoch120.pth`` / POSTER       :class:`IR50`
                         ``ir50.pth`` (``input_layer.*``, ``body.N.*``); POSTER++'s
                         ``body1/2/3.N.*`` renaming is mapped back to ``body.N``
``mobilefacenet``        cunjian / POSTER ``mobilefacenet_model_best.pth.tar``          :class:`MobileFaceNetTrunk`
                         (``state_dict``; ``conv1``, ``conv2_dw``, ``conv_23`` ...)
``convnext_torchvision`` torchvision ``convnext_base`` weights (``features.N.*``)        :class:`ConvNeXtTrunk`
``convnext_timm``        timm ``convnext_base`` (``stem.*``, ``stages.S.blocks.J.*``)   :class:`ConvNeXtTrunk`
=======================  ===========================================================  ==========================

Checkpoint tensors of parts the target leaves out (output layers, a 1000-way fc, later stages) are
ignored and counted. A target tensor that is missing or has the wrong shape raises
:class:`PretrainedMismatchError` naming the keys - random weights are never kept silently - and so
do unused tensors inside a part the target has: they are another network's (an IR-SE-50's
squeeze-excitation in IR-50's units, a ResNet-34's extra blocks in ResNet-18's stages), whose
remaining tensors would load into a network that is neither pretrained nor random.
"""
from __future__ import annotations

import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ferdata.errors import no_memory_for, out_of_memory
from ferdata.registry import Registry
from ferdata.tario import sha256_file

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
LAYOUTS: Registry[Callable[[StateDict], StateDict]] = Registry("checkpoint layout")
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
# Layouts whose trunk keeps the first units of one flat, numbered list of the published network's
# units or stages: a unit index the trunk lacks is a later stage it leaves out.
_UNIT_LISTS = {"ir50": "body", "convnext_torchvision": "features", "convnext_timm": "features"}   # timm: as mapped


class PretrainedMismatchError(RuntimeError, ValueError):
    """A checkpoint does not provide every tensor the target module needs, or is no weight file.
    A ``ValueError`` too: bad input (:mod:`ferdata.errors`), told in one line by the DVC stages as by
    the ``fermodels`` commands."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did: how many target tensors were filled, how many ignored."""

    path: str
    layout: str
    matched: int
    ignored: int


# Model keywords that name a weight file, and the value they take when a model is rebuilt from a
# training checkpoint: its state dict holds those weights, so the file (perhaps on another
# machine) is neither needed nor read.
WEIGHT_FILE_KWARGS = ("pretrained", "landmark_checkpoint")
FROM_CHECKPOINT = "<weights from the training checkpoint>"
# what a wrapper's state dict puts before every weight's name: which wrapper
WRAPPER_PREFIXES = {"module.": "DDP (or DataParallel)", "_orig_mod.": "torch.compile"}


def load_pretrained(module: nn.Module, path: str | Path, layout: str) -> LoadReport:
    """Fill ``module`` (a backbone trunk) from the checkpoint at ``path`` in ``layout``
    (nothing for :data:`FROM_CHECKPOINT`: the caller loads a training checkpoint next).

    Raises ``FileNotFoundError`` for a missing file and :class:`PretrainedMismatchError` if any
    parameter or buffer of ``module`` is absent from the mapped checkpoint or has another shape.
    """
    mapper = LAYOUTS.get(layout)        # first: a misspelt layout is told when params are checked (meta build)
    if path == FROM_CHECKPOINT:
        return LoadReport(FROM_CHECKPOINT, layout, matched=0, ignored=0)
    if not str(path).strip():
        raise PretrainedMismatchError(f"the pretrained checkpoint path ({layout}) is empty: give the weight file's "
                                      "path, or none for random weights")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} ({layout}) does not exist; "
                                "pass the path of the downloaded file")
    if bad := failed_checksum(path):
        raise PretrainedMismatchError(f"pretrained checkpoint {str(path)!r} ({layout}) is damaged: its {bad!r} fails "
                                      "its CRC-32 (torch does not check them); download it again")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's many kinds: a cut download, an HTML page, pickled objects
        if out_of_memory(e):                # the machine's, not the download's
            raise no_memory_for(path, e) from e
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()    # torch bolds words of its advice with ANSI codes
        first = plain.split("\n", 1)[0].split(". ")[0][:160] or type(e).__name__    # not its weights_only advice
        raise PretrainedMismatchError(f"pretrained checkpoint {str(path)!r} ({layout}) cannot be read as weights "
                                      f"(torch: {first}): a cut-off download or another kind of file? download it "
                                      "again, or save its state dict alone (torch.save(model.state_dict(), ...))"
                                      ) from e
    mapped = mapper(_strip_prefix(_unwrap(raw, path)))
    expected = module.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith(_OPTIONAL_SUFFIXES)]
    wrong = [f"{k}: model {tuple(v.shape)} vs checkpoint {tuple(mapped[k].shape)}"
             for k, v in expected.items() if k in mapped and mapped[k].shape != v.shape]
    if missing or wrong:
        raise PretrainedMismatchError(
            f"{path} does not fit {type(module).__name__} as layout {layout!r}: "
            f"{len(missing)} missing ({_head(missing)}); {len(wrong)} wrong shape ({_head(wrong)}). "
            f"Checkpoint keys after mapping start with: {_head(sorted(mapped))}")
    used = {k: mapped[k] for k in expected if k in mapped}
    if nonfinite := [k for k, v in used.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise PretrainedMismatchError(f"{path} holds weights that are not finite (NaN or inf in "
                                      f"{_head(nonfinite, 3)}): a damaged file or a diverged training run's; "
                                      "download it again")
    foreign = _inside_the_target([k for k in mapped if k not in used], module, layout)
    if foreign:
        raise PretrainedMismatchError(
            f"{path} is not the network layout {layout!r} expects: {len(foreign)} of its tensors sit inside parts "
            f"{type(module).__name__} has but does not use ({_head(foreign)}), as in another network's file "
            "(an IR-SE-50 for IR-50, a ResNet-34 for ResNet-18); pass the file the layout names")
    module.load_state_dict(used, strict=False)
    report = LoadReport(str(path), layout, matched=len(used), ignored=len(mapped) - len(used))
    log.info("loaded %d tensors from %s (%s); %d checkpoint tensors unused",
             report.matched, path, layout, report.ignored)
    return report


def failed_checksum(path: Path) -> str | None:
    """The first member of a zip checkpoint (what ``torch.save`` writes) whose bytes fail their
    CRC-32, which ``torch.load`` never checks: damaged weights would load as numbers. None when all
    pass, when the file is no zip (the legacy format: torch.load says what it is), or when it was saved
    without checksums (``torch.serialization.set_crc32_options(False)`` writes every one as 0)."""
    try:
        with zipfile.ZipFile(path) as z:
            if all(info.CRC == 0 for info in z.infolist()):
                return None
            for info in z.infolist():       # ZipFile.testzip, which catches BadZipFile alone
                try:
                    with z.open(info) as f:
                        while f.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error):   # a damaged entry
                    return info.filename
            return None
    except zipfile.BadZipFile:
        return None


def weight_file_digests(kwargs: Mapping[str, object]) -> dict[str, str]:
    """sha256 of each weight file a model's keywords name (:data:`WEIGHT_FILE_KWARGS`), so that a run
    started from other weights under the same path is another run (training does not resume it)."""
    out = {}
    for key in WEIGHT_FILE_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str) and value and value != FROM_CHECKPOINT:
            out[key] = sha256_file(Path(value).expanduser())
    return out


def _inside_the_target(unused: list[str], module: nn.Module, layout: str) -> list[str]:
    """The ``unused`` checkpoint keys that are not in a part ``module`` leaves out: a top-level
    module it lacks (``fc``, ``output_layer``, a ``layer4`` it stops before), or a unit of the
    layout's unit list (:data:`_UNIT_LISTS`) past its own."""
    present = {name for name, _ in module.named_modules()}
    units = _UNIT_LISTS.get(layout)

    def left_out(key: str) -> bool:
        top, _, rest = key.partition(".")
        if top not in present:
            return True
        return top == units and f"{top}.{rest.partition('.')[0]}" not in present
    return [k for k in unused if not left_out(k)]


def _unwrap(raw: object, path: Path) -> StateDict:
    """The state dict inside a checkpoint file (``state_dict``/``model`` wrappers are common)."""
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
        tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise PretrainedMismatchError(f"{path} holds no state dict of tensors (got {type(raw).__name__})")


def _strip_prefix(state: StateDict) -> StateDict:
    """Each name without the prefixes a wrapper gives it (:data:`WRAPPER_PREFIXES`, one in another too:
    ``_orig_mod.module.``). Name by name: an averaged model's file holds ``module.*`` and ``n_averaged``."""
    def bare(name: str) -> str:
        while prefix := next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None):
            name = name[len(prefix):]
        return name
    return {bare(k): v for k, v in state.items()}


def _head(items: list[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "") if items else "none"


@LAYOUTS.register("msceleb_resnet18")
def _resnet18(state: StateDict) -> StateDict:
    """torchvision ResNet-18 keys are already the trunk's keys."""
    return dict(state)


_IR50_STAGE_OFFSET = {"body1": 0, "body2": 3, "body3": 7, "body4": 21}


@LAYOUTS.register("ir50")
def _ir50(state: StateDict) -> StateDict:
    """face.evoLVe keys are the trunk's keys; POSTER++ ``bodyS.N`` becomes ``body.(offset+N)``."""
    out: StateDict = {}
    for key, value in state.items():
        m = re.match(r"(body[1-4])\.(\d+)\.(.*)", key)
        if m:
            key = f"body.{_IR50_STAGE_OFFSET[m.group(1)] + int(m.group(2))}.{m.group(3)}"
        out[key] = value
    return out


@LAYOUTS.register("mobilefacenet")
def _mobilefacenet(state: StateDict) -> StateDict:
    """cunjian's names are the trunk's names (``conv1.conv.weight``, ``conv_4.model.5...``)."""
    return dict(state)


@LAYOUTS.register("convnext_torchvision")
def _convnext_torchvision(state: StateDict) -> StateDict:
    return dict(state)


_TIMM_BLOCK = {"conv_dw": "block.0", "norm": "block.2", "mlp.fc1": "block.3", "mlp.fc2": "block.5"}


@LAYOUTS.register("convnext_timm")
def _convnext_timm(state: StateDict) -> StateDict:
    """timm ConvNeXt -> torchvision ``features`` indices (stage S sits at ``features.2S+1``)."""
    out: StateDict = {}
    for key, value in state.items():
        if m := re.match(r"stem\.([01])\.(weight|bias)$", key):
            out[f"features.0.{m.group(1)}.{m.group(2)}"] = value
        elif m := re.match(r"stages\.(\d)\.downsample\.([01])\.(weight|bias)$", key):
            out[f"features.{2 * int(m.group(1))}.{m.group(2)}.{m.group(3)}"] = value
        elif m := re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(weight|bias)$", key):
            prefix = f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}"
            part = _TIMM_BLOCK.get(m.group(3), m.group(3))     # another part stays inside its block: refused there
            out[f"{prefix}.{part}.{m.group(4)}"] = value
        elif m := re.match(r"stages\.(\d)\.blocks\.(\d+)\.gamma$", key):
            prefix = f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}"
            out[f"{prefix}.layer_scale"] = value.reshape(-1, 1, 1)
        else:                                                 # head.*: a part the trunk leaves out, counted
            out[key] = value
    return out
