"""Check prepared shards against their ``_info.json`` before trusting them.

For shards that came from another machine (``dvc pull``, a copy, a download): every
listed shard exists and matches its sha256, its size (``bytes``, which training checks) and its
sample count; the summaries training, evaluation and prediction act on match the samples' own
``cls`` and ``json`` (class histogram in the one class order, test subsets, face backends, label
modes); no shard file is missing from the list or listed twice; the info file has the fields
training reads; each split folder holds the split its info
file names (folders swapped in a copy would test on the validation set); no sample is in two
shards or two splits, and each sample's members are next to each other; every member is a safe
regular file (no absolute paths, ``..``, links, devices, pickles) and every ``.npy`` loads
without pickle; every sample has the members the shard stage always writes (``jpg``, ``cls``,
``json``), a ``cls`` that is a class id and agrees with its ``json`` label, and landmarks (where
it has them) that are 68 finite points. Images are not decoded (the sha256 covers them). Problems
are returned as lines, one per finding, never raised; a path that is no folder at all (missing,
or a file) is the caller's mistake and raises.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferdata.classes import CLASSES, stored_class_id
from ferdata.imagefile import declared_size
from ferdata.layout import INFO, MADE_BY
from ferdata.records import SPLITS
from ferdata.summary import SplitSummary, check_info
from ferdata.tario import BadTarError, UnsafeTarError, iter_tar_samples, listed_shard, load_npy, sha256_file
from ferdata.tarscan import NOT_BY_OFFSET, is_compressed

# every sample the shard stage writes has these (lmk.npy: 68 points only, and then heatmap.png: WITH_LANDMARKS)
REQUIRED = ("cls", "jpg", "json", "left.jpg", "right.jpg", "regions.json")
WITH_LANDMARKS = ("heatmap.png",)
INFO_NEEDS = ("class_histogram", "label_map")   # always written; training reads the histogram


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Problems found (empty when every split matches its info file); ``FileNotFoundError`` or
    ``NotADirectoryError`` when ``shard_dir`` does not exist or is a file."""
    root = Path(shard_dir)
    fix = f"pass the shards folder (with <split>/{INFO}), e.g. data/<dataset>/shards"
    if not root.exists():
        raise FileNotFoundError(f"{shard_dir} does not exist: {fix}")
    if not root.is_dir():
        raise NotADirectoryError(f"{shard_dir} is a file, not a folder: {fix}")
    if (root / INFO).is_file():                                  # one split's folder
        return verify_split(root / INFO)
    infos = sorted(root.glob(f"*/{INFO}"))
    if not infos:                  # the caller's mistake (another folder), not damage: raised
        raise FileNotFoundError(f"no {INFO} under {shard_dir}: pass the shards folder (with <split>/{INFO})")
    # The shard stage writes every split (an empty one too): a missing one was lost on the way.
    # (An _info.json that is there but no file is one problem line of its own, from _verify_split.)
    problems = [_split_absent(root / split) for split in SPLITS if root / split / INFO not in infos]
    problems += [f"{d}: shards without {INFO}" for d in sorted(p for p in root.iterdir() if p.is_dir())
                 if d.name not in SPLITS and d / INFO not in infos and any(d.glob("*.tar"))]
    owner: dict[str, str] = {}                                    # sample key -> the split holding it
    for info_path in infos:
        found, keys = _verify_split(info_path)
        problems += found
        split = info_path.parent.name
        shared = sorted(k for k in keys if k in owner)
        if shared:
            problems.append(f"{root}: {len(shared)} sample(s) in both {owner[shared[0]]} and {split} (e.g. "
                            f"{shared[0]!r}): a sample must be in one split only; prepare the shards again")
        owner.update((k, split) for k in keys if k not in owner)
    return problems + _mixed_preparations(root, infos)


def _split_absent(folder: Path) -> str:
    """Why ``folder`` (a split's) yielded no info file: none there (a copy that lost it), or a folder this
    user may not read, which the glob skips without a word (it was told as a lost file, so the user copied
    again what was all there)."""
    try:
        (folder / INFO).stat()
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:                                    # no permission to enter the folder, a bad disk
        return f"{folder}: unreadable ({e.strerror or e}); give this user read access, or copy the shards again"
    return f"{folder}: no {INFO} (the shard stage writes one for every split; the copy is incomplete)"


def _made_by(info_path: Path) -> dict | None:
    """The :data:`MADE_BY` fields of an info file (None: unreadable or damaged, told by :func:`_verify_split`)."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        _info_fields(info)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    return {k: info.get(k) for k in MADE_BY}


def _mixed_preparations(root: Path, infos: list[Path]) -> list[str]:
    """A problem for each split whose info file says it was made otherwise than the first split's:
    the shard stage writes every split of a folder in one run, so they differ only in a copy that
    mixes two preparations (another crop, detector or reader option: training validates or tests
    on faces made otherwise than it trained on)."""
    made = [(p.parent.name, m) for p in infos if (m := _made_by(p)) is not None]
    problems = []
    for split, m in made[1:]:
        first, ref = made[0]
        differ = [k for k in MADE_BY if m[k] != ref[k]]
        if differ:
            k = differ[0]
            problems.append(f"{root}: {first} and {split} come from two preparations ({k} {ref[k]!r} vs {m[k]!r}; "
                            "the shard stage writes every split in one run): a copy mixing two runs? copy the "
                            "shards again, or prepare them again")
    return problems


def verify_split(info_path: Path) -> list[str]:
    """Problems of one split folder described by ``info_path``."""
    return _verify_split(info_path)[0]


Listed = tuple[str, str, int, int | None]      # a shard's name, sha256, count and size (None: not listed)


def _info_fields(info: dict) -> tuple[list[Listed], int]:
    """The listed shards (name, sha256, count, bytes) and the sample count of an info file;
    ``TypeError`` for a field of the wrong kind (:func:`check_info`), so that a damaged file is one
    problem line, not a crash."""
    check_info(info)
    listed = [(sh["name"], sh["sha256"], sh["count"], sh.get("bytes")) for sh in info["shards"]]
    return listed, info["num_samples"]


def _verify_split(info_path: Path) -> tuple[list[str], set[str]]:
    """Problems of one split folder and the sample keys its shards hold."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        listed, expected_total = _info_fields(info)
    except OSError as e:                                      # a folder, a dangling link, no permission
        return [f"{info_path}: unreadable ({e.strerror or e}); copy the shards again"], set()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:   # Recursion: JSON nested too deep
        return [f"{info_path}: unreadable ({type(e).__name__}: {e})"], set()
    folder = info_path.parent
    problems = []
    if folder.name in SPLITS and info.get("split", folder.name) != folder.name:
        problems.append(f"{folder}: {INFO} describes the {info['split']!r} split (split folders swapped or "
                        "renamed in a copy?); copy the shards again")
    elif folder.name not in SPLITS:           # readers look for train/val/test only: this one is never read
        problems.append(f"{folder}: a split folder of another name ({INFO} describes the "
                        f"{info.get('split', '?')!r} split; readers look for {', '.join(SPLITS)}): renamed in a "
                        "copy? copy the shards again")
    names = Counter(n for n, *_ in listed)
    problems += [f"{folder / n}: listed {c} times in {INFO}" for n, c in sorted(names.items()) if c > 1]
    problems += [f"{folder / p.name}: shard not listed in {INFO}"
                 for p in sorted(folder.glob("*.tar")) if p.name not in names]
    total, tally = 0, _Tally()
    for name, sha, count, size in listed:
        try:
            path = listed_shard(folder, name)
        except UnsafeTarError as e:
            problems.append(str(e))
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            digest = sha256_file(path)
        except OSError as e:                              # a bad disk or no permission: the rest is still checked
            problems.append(f"{path}: unreadable ({e.strerror or e}); copy the shards again")
            continue
        if digest != sha:
            problems.append(f"{path}: sha256 mismatch (corrupt, truncated or from another run)"
                            + _what_differs(path, count, size, info))
        else:
            found, problem = _scan(path, tally, _crop_side(info))
            if problem:
                problems.append(problem)
            elif found != count:
                problems.append(f"{path}: {found} samples, {INFO} says {count}")
            actual = path.stat().st_size
            if not problem and size is not None and actual != size:
                problems.append(f"{path}: {actual} bytes, {INFO} says {size} (its sha256 matches, so the size in "
                                f"{INFO} is wrong; training refuses the shard): prepare the shards again")
            total += found
    if not problems and total != expected_total:
        problems.append(f"{folder}: {total} samples, {INFO} says {expected_total}")
    absent = [f for f in INFO_NEEDS if f not in info]
    if not problems and absent:
        problems.append(f"{info_path}: no {' and no '.join(absent)} (the shard stage always writes "
                        f"{' and '.join(INFO_NEEDS)}; training reads the histogram): prepare the shards again")
    if not problems:
        problems += _summary_problems(folder, info, tally)
    return problems, tally.keys


def _what_differs(path: Path, count: int, size: int | None, info: dict) -> str:
    """What a look inside a shard whose sha256 differs finds (its size against the listed one, the first
    sample whose members are bad or lacking, its sample count), as "; ..." to add to the mismatch: the
    mismatch alone named no sample, nor said whether the file was cut short or is another run's."""
    said = []
    actual = path.stat().st_size
    if size is not None and actual != size:
        said.append(f"{actual} bytes, {INFO} says {size}")
    found, problem = _scan(path, _Tally(), _crop_side(info))     # a tally of its own: its keys count nowhere
    if problem:
        said.append(problem.removeprefix(f"{path}: ").removesuffix(": prepare the shards again"))
    elif found != count:
        said.append(f"{found} samples, {INFO} says {count}")
    return "".join(f"; {s}" for s in said)


@dataclass
class _Tally:
    """A split's sample keys and what its samples say of themselves (:class:`SplitSummary`)."""

    keys: set[str] = field(default_factory=set)
    summary: SplitSummary = field(default_factory=SplitSummary)

    def add(self, key: str, label: int | None, meta: dict) -> None:
        self.keys.add(key)
        self.summary.add(key, label, meta)


def _summary_problems(folder: Path, info: dict, tally: _Tally) -> list[str]:
    """Where the info file's summaries of the samples, which training, evaluation and prediction act
    on (class counts by the canonical class order, test subsets, face backends, label modes), differ
    from what the samples' own ``cls`` and ``json`` say. Shards of versions before the info file
    recorded ``face_backends`` (which came last) may lack ``subsets`` and ``soft_labels`` whose
    samples carry them: there only listed keys that are not in the shards are problems."""
    fix = "edited, or from another preparation? prepare the shards again"
    if info["label_map"] != list(CLASSES):
        return [f"{folder}: {INFO}'s label_map {info['label_map']} is not the class order "
                f"{list(CLASSES)} every stage reads class ids in: {fix}"]
    problems, want, whole = [], tally.summary.info(), "face_backends" in info
    hist = {c: n for c, n in want["class_histogram"].items() if n}
    if {k: v for k, v in info["class_histogram"].items() if v} != hist:
        problems.append(f"{folder}: class counts {hist} differ from {INFO} {info['class_histogram']}")
    listed = {name: set(members) for name, members in (info.get("subsets") or {}).items()}
    named = {name: set(keys) for name, keys in want["subsets"].items()} if whole else listed
    for name in sorted(set(listed) | set(named)):
        given, says = listed.get(name, set()), named.get(name, set())
        stray = sorted(given - tally.keys)
        extra, missed = sorted(given - says - set(stray)), sorted(says - given)
        if stray or extra or missed:
            problems.append(f"{folder}: subset {name!r} in {INFO} lists {len(stray)} keys not in the shards and "
                            f"{len(extra)} whose json does not name it, and misses {len(missed)} whose json does "
                            f"(e.g. {(stray or extra or missed)[0]!r}): {fix}")
    for name in ("face_backends", "soft_labels") if whole else ():
        if info.get(name, {}) != want.get(name, {}):
            problems.append(f"{folder}: {INFO}'s {name} {info.get(name, {})} differ from the samples' "
                            f"{want.get(name, {})}: {fix}")
    return problems


def _crop_side(info: dict) -> int | None:
    """The side of the split's stored faces as its info file records it (None: not recorded)."""
    try:
        side = info["preprocess"]["align"]["size"]
    except (KeyError, TypeError):
        return None
    return side if isinstance(side, int) and not isinstance(side, bool) else None


def _scan(path: Path, tally: _Tally, side: int | None = None) -> tuple[int, str]:
    """(samples in a shard, problem or ""), each sample added to ``tally``; a key seen already (in
    this split's shards) is a problem, and so is a sample whose members are bad (:func:`_read_sample`;
    a face not ``side`` square) or lack one of :data:`REQUIRED` (or of :data:`WITH_LANDMARKS`; named only once
    the whole shard is read: the rest may come later, split apart from it)."""
    found = 0
    here: dict[str, frozenset[str]] = {}                  # this shard's keys -> their members' extensions
    lacking: dict[str, list[str]] = {}                   # this shard's keys -> the required members they lack
    try:
        with open(path, "rb") as f:
            if is_compressed(f.read(6)):                  # the stream reads it; the indexed reader cannot
                return found, f"{path}: refused: {NOT_BY_OFFSET}"
        for key, fields in iter_tar_samples(path):
            if key in here:                               # the reader groups a sample's members by adjacency
                if here[key].isdisjoint(fields):
                    return found, (f"{path}: the members of sample {key!r} are split apart in the shard (other "
                                   "samples' members between them), so readers take it for two samples: "
                                   "prepare the shards again")
                return found, f"{path}: sample {key!r} is in this shard twice: prepare the shards again"
            if key in tally.keys:
                return found, f"{path}: sample {key!r} is in this split twice (a shard copied or listed twice?)"
            problem, label, meta = _read_sample(path, key, fields, side)
            if problem:
                return found, f"{path}: sample {key!r} {problem}: prepare the shards again"
            missing = [ext for ext in REQUIRED + (WITH_LANDMARKS if "lmk.npy" in fields else ()) if ext not in fields]
            if missing:
                lacking[key] = missing
            here[key] = frozenset(fields)
            tally.add(key, label, meta)
            found += 1
    except BadTarError as e:                 # its own advice, "check it with `ferdata verify`", is this command
        return found, f"{path}: refused: not a readable tar ({e.__cause__ or e})"
    except (UnsafeTarError, tarfile.TarError, ValueError) as e:
        return found, f"{path}: refused: {e}"
    except OSError as e:
        return found, f"{path}: unreadable ({e.strerror or e}); copy the shards again"
    if lacking:
        key, missing = next(iter(lacking.items()))
        more = f"; {len(lacking) - 1} more of its samples lack members too" if len(lacking) > 1 else ""
        return found, (f"{path}: sample {key!r} has no {' and no '.join(missing)} (the shard stage writes "
                       f"{', '.join(REQUIRED)} for every sample, {', '.join(WITH_LANDMARKS)} with lmk.npy){more}: "
                       "prepare the shards again")
    return found, ""


def _read_sample(path: Path, key: str, fields: dict[str, bytes],
                 side: int | None = None) -> tuple[str, int | None, dict]:
    """(what is wrong with the members one sample has, "" when nothing; its ``cls``; its ``json``):
    wrong is an ``.npy`` that needs pickle (``UnsafeTarError``), landmarks that are not 68 finite
    (x, y) points, a ``jpg`` whose header declares another size than ``side`` square (the landmarks
    are in its pixels; not decoded), a ``cls`` that is no class id, a ``json`` that is no object or
    whose label is not the ``cls``, and a member of 0 bytes."""
    empty = sorted(ext for ext, data in fields.items() if not data)     # every member the stage writes holds bytes
    if empty:                                    # images are not decoded: a 0-byte jpg declares no size to compare
        return f"has an empty {' and an empty '.join(empty)} (0 bytes; the shard stage writes none)", None, {}
    size = declared_size(fields["jpg"]) if side is not None and "jpg" in fields else None
    if size is not None and size != (side, side):
        return f"has a jpg of {size[0]}x{size[1]}, but {INFO} records faces of align.size {side}", None, {}
    for ext, data in fields.items():
        if ext.endswith("npy"):
            array = load_npy(data, f"{path}:{key}.{ext}")
            if ext == "lmk.npy" and (array.shape != (68, 2) or array.dtype.kind not in "fiu"
                                     or not np.isfinite(array).all()):
                return f"has a lmk.npy of {array.dtype} {array.shape}, not 68 finite (x, y) points", None, {}
    label, meta = None, {}
    if "cls" in fields:
        label = stored_class_id(fields["cls"])
        if label is None:
            return f"has cls {fields['cls'][:20]!r}, not a class id 0-{len(CLASSES) - 1}", None, {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (ValueError, RecursionError) as e:         # RecursionError: nested deeper than the decoder goes
            return f"has a json that does not parse ({e})", None, {}
        if not isinstance(meta, dict):
            return f"has a json that is a {type(meta).__name__}, not an object", None, {}
        if label is not None and "label" in meta and meta["label"] != label:
            return f"has cls {label} but its json says label {meta['label']!r}", None, {}
    return "", label, meta
