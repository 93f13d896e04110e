"""Check prepared shards against their ``_info.json``: sha256 per shard and sample counts."""
from __future__ import annotations

import json
from pathlib import Path

from ferdata.stages.shard import INFO
from ferdata.tario import iter_tar_samples, sha256_file


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Problems found (empty when every split matches its info file)."""
    problems: list[str] = []
    infos = sorted(Path(shard_dir).glob(f"*/{INFO}")) or sorted(Path(shard_dir).glob(INFO))
    if not infos:
        return [f"no {INFO} under {shard_dir}"]
    for info_path in infos:
        info = json.loads(info_path.read_text())
        total = 0
        for sh in info["shards"]:
            path = info_path.parent / sh["name"]
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if sha256_file(path) != sh["sha256"]:
                problems.append(f"{path}: sha256 mismatch")
                continue
            count = sum(1 for _ in iter_tar_samples(path))
            if count != sh["count"]:
                problems.append(f"{path}: {count} samples, _info.json says {sh['count']}")
            total += count
        if total != info["num_samples"] and not any(str(info_path.parent) in p for p in problems):
            problems.append(f"{info_path.parent}: {total} samples, _info.json says {info['num_samples']}")
    return problems
