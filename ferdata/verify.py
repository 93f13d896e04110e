"""Check prepared shards against their ``_info.json`` before trusting them.

For shards that came from another machine (``dvc pull``, a copy, a download): every
listed shard exists and matches its sha256, its sample count and the split's class
histogram; no shard file is missing from the list; every member is a safe regular
file (no absolute paths, ``..``, links, devices, pickles) and every ``.npy`` loads
without pickle. Problems are returned as lines, one per finding, never raised; a path that is
no folder at all (missing, or a file) is the caller's mistake and raises.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

from ferdata.layout import INFO
from ferdata.records import SPLITS
from ferdata.tario import UnsafeTarError, iter_tar_samples, listed_shard, load_npy, sha256_file


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
    if not infos:
        return [f"no {INFO} under {shard_dir}: pass the shards folder (with <split>/{INFO})"]
    # The shard stage writes every split (an empty one too): a missing one was lost on the way.
    problems = [f"{root / split}: no {INFO} (the shard stage writes one for every split; the copy is "
                "incomplete)" for split in SPLITS if not (root / split / INFO).is_file()]
    problems += [f"{d}: shards without {INFO}" for d in sorted(p for p in root.iterdir() if p.is_dir())
                 if d.name not in SPLITS and not (d / INFO).is_file() and any(d.glob("*.tar"))]
    for info_path in infos:
        problems += verify_split(info_path)
    return problems


def verify_split(info_path: Path) -> list[str]:
    """Problems of one split folder described by ``info_path``."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        listed = [(sh["name"], sh["sha256"], int(sh["count"])) for sh in info["shards"]]
        expected_total = int(info["num_samples"])
        for field, kind in (("class_histogram", dict), ("label_map", list), ("subsets", dict)):
            if not isinstance(info.get(field, kind()), kind):
                raise TypeError(f"{field} is {type(info[field]).__name__}, not {kind.__name__}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{info_path}: unreadable ({type(e).__name__}: {e})"]
    folder = info_path.parent
    problems = [f"{folder / p.name}: shard not listed in {INFO}"
                for p in sorted(folder.glob("*.tar")) if p.name not in {n for n, _, _ in listed}]
    total, classes, keys = 0, Counter(), set()
    for name, sha, count in listed:
        try:
            path = listed_shard(folder, name)
        except UnsafeTarError as e:
            problems.append(str(e))
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{path}: sha256 mismatch (corrupt, truncated or from another run)")
        else:
            found, problem = _scan(path, classes, keys)
            if problem:
                problems.append(problem)
            elif found != count:
                problems.append(f"{path}: {found} samples, {INFO} says {count}")
            total += found
    if not problems and total != expected_total:
        problems.append(f"{folder}: {total} samples, {INFO} says {expected_total}")
    if not problems and "class_histogram" in info:
        labels = info.get("label_map") or []
        hist = {labels[c] if 0 <= c < len(labels) else str(c): n for c, n in classes.items()}
        if {k: v for k, v in info["class_histogram"].items() if v} != hist:
            problems.append(f"{folder}: class counts {hist} differ from {INFO} {info['class_histogram']}")
    if not problems:
        for name, members in sorted((info.get("subsets") or {}).items()):
            stray = sorted(set(members) - keys)
            if stray:
                problems.append(f"{folder}: subset {name!r} in {INFO} lists {len(stray)} keys that are not in "
                                f"the shards (e.g. {stray[0]!r})")
    return problems


def _scan(path: Path, classes: Counter, keys: set[str]) -> tuple[int, str]:
    """(samples in a shard, problem or ""), counting ``cls`` labels into ``classes`` and adding
    the sample keys to ``keys``."""
    found = 0
    try:
        for key, fields in iter_tar_samples(path):
            for ext, data in fields.items():
                if ext.endswith("npy"):
                    load_npy(data, f"{path}:{key}.{ext}")
            if "cls" in fields:
                classes[int(fields["cls"])] += 1
            keys.add(key)
            found += 1
    except (UnsafeTarError, tarfile.TarError, ValueError) as e:
        return found, f"{path}: refused: {e}"
    return found, ""
