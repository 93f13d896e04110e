"""Security of shards from elsewhere: malicious tar members and pickled payloads are
refused by every reader; the code base never unpickles, shells out or loads YAML unsafely."""
from __future__ import annotations

import ast
import io
import json
import multiprocessing
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

import ferdata.tario as tario
from ferdata.errors import message
from ferdata.stages.derive import run_derive
from ferdata.tarindex import index_chunks
from ferdata.tario import UnsafeTarError, iter_tar_samples, load_npy, sha256_file
from ferdata.verify import verify_shards
from tests.reliability.corpus import REPO, stage_params

CANARY = Path(tempfile.gettempdir()) / "ferdata-security-canary"


class Exploit:
    """Unpickling this creates :data:`CANARY`; nothing in the pipeline may ever do it."""

    def __reduce__(self):
        return (Path.touch, (CANARY,))


def _member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


MALICIOUS = {
    "absolute path": _member("/etc/cron.d/evil.jpg"),
    "parent escape": _member("../../outside.jpg"),
    "nested escape": _member("sample/../../../outside.jpg"),
    "symlink": _member("sample.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    "hard link": _member("sample.jpg", kind=tarfile.LNKTYPE, link="/etc/shadow"),
    "char device": _member("sample.jpg", kind=tarfile.CHRTYPE),
    "block device": _member("sample.jpg", kind=tarfile.BLKTYPE),
    "fifo": _member("sample.jpg", kind=tarfile.FIFOTYPE),
    "directory": _member("sample", kind=tarfile.DIRTYPE),
    "pickle member": _member("sample.pyd", pickle.dumps(Exploit())),
    "torch member": _member("sample.pth", pickle.dumps(Exploit())),
    "backslash path": _member("..\\..\\outside.jpg"),
}


def write_tar(path: Path, members: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Exploit()], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_canary():
    CANARY.unlink(missing_ok=True)
    yield
    assert not CANARY.exists(), "a pickle was executed"


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_member_is_refused_by_every_reader(case, tmp_path):
    good = _member("ok.jpg", b"\xff\xd8fine")
    tar = write_tar(tmp_path / "aligned" / "aligned-000000.tar", [good, MALICIOUS[case]])
    with pytest.raises(UnsafeTarError):
        list(iter_tar_samples(tar))
    with pytest.raises(UnsafeTarError):                  # a member the reader is not asked for, too
        list(iter_tar_samples(tar, only={"jpg"}))
    with pytest.raises(UnsafeTarError):
        index_chunks(tmp_path / "aligned", "aligned")
    split = tmp_path / "shards" / "train"
    split.mkdir(parents=True)
    shutil.copy(tar, split / "train-000000.tar")
    (split / "_info.json").write_text(json.dumps({"num_samples": 1, "shards": [
        {"name": "train-000000.tar", "count": 1, "sha256": sha256_file(split / "train-000000.tar")}]}))
    problems = verify_shards(split)                      # the one split written here
    assert len(problems) == 1 and "refused" in problems[0]
    assert not (tmp_path / "outside.jpg").exists() and not (tmp_path.parent / "outside.jpg").exists()


def test_oversized_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tario, "MAX_MEMBER_BYTES", 1000)
    tar = write_tar(tmp_path / "big.tar", [_member("a.jpg", b"\0" * 1001)])
    with pytest.raises(UnsafeTarError, match="limit"):
        list(iter_tar_samples(tar))


def test_pickled_npy_is_refused(tmp_path):
    with pytest.raises(UnsafeTarError, match="pickled"):
        load_npy(pickled_npy(), "x.lmk.npy")
    plain = io.BytesIO()
    np.save(plain, np.eye(2, dtype=np.float32), allow_pickle=False)
    assert load_npy(plain.getvalue()).dtype == np.float32
    raw_pickle = pickle.dumps([Exploit()])                         # no .npy at all: a bare pickle
    with pytest.raises(UnsafeTarError, match="not a .npy array"):
        load_npy(raw_pickle, "x.lmk.npy")
    with pytest.raises(UnsafeTarError, match=r"x.lmk.npy: not a .npy array \(no NUMPY header: damaged\?\)"):
        load_npy(b"\x00garbage bytes" * 4, "x.lmk.npy")           # was "holds pickled objects"


def _edited_aligned(src: Path, tmp_path: Path, edit) -> tuple[Path, str]:
    """A copy of ``src``'s aligned chunks whose first sample's fields ``edit`` changed; its key."""
    aligned = tmp_path / "aligned"
    shutil.copytree(src / "aligned", aligned)
    first = sorted(aligned.glob("aligned-*.tar"))[0]
    samples = list(iter_tar_samples(first))
    edit(samples[0][1])
    write_tar(first, [_member(f"{k}.{ext}", data) for k, f in samples for ext, data in sorted(f.items())])
    return aligned, samples[0][0]


def test_derive_refuses_aligned_chunks_with_a_pickled_npy(bad_corpus_run, tmp_path):
    aligned, _ = _edited_aligned(bad_corpus_run[0], tmp_path, lambda fields: fields.update({"lmk.npy": pickled_npy()}))
    with pytest.raises(UnsafeTarError, match="pickled"):
        run_derive(aligned, stage_params(tmp_path)["derive"], tmp_path / "derived")
    assert not (tmp_path / "derived").exists() and not list(tmp_path.glob(".derived*"))


def test_derive_names_an_aligned_sample_without_its_image(bad_corpus_run, tmp_path):
    """It said only "error: jpg" (a bare KeyError, raised in a worker)."""
    aligned, key = _edited_aligned(bad_corpus_run[0], tmp_path, lambda fields: fields.pop("jpg"))
    with pytest.raises(ValueError, match=f"aligned sample '{key}' has no face image") as caught:
        run_derive(aligned, replace(stage_params(tmp_path)["derive"], workers=2), tmp_path / "derived")
    assert message(caught.value).endswith(f"(while processing aligned sample '{key}')")
    assert not (tmp_path / "derived").exists()
    assert not multiprocessing.active_children()          # its workers stopped with it, not at garbage collection


def test_verify_flags_a_pickled_npy_in_a_shard(bad_corpus_run, tmp_path):
    src, _ = bad_corpus_run
    shards = tmp_path / "shards"
    shutil.copytree(src / "shards", shards)
    shard = shards / "test" / "test-000000.tar"
    samples = list(iter_tar_samples(shard))
    samples[0][1]["lmk.npy"] = pickled_npy()
    write_tar(shard, [_member(f"{k}.{ext}", data) for k, f in samples for ext, data in sorted(f.items())])
    info_path = shards / "test" / "_info.json"
    info = json.loads(info_path.read_text())
    info["shards"][0]["sha256"] = sha256_file(shard)            # an attacker can fix the hash too
    info_path.write_text(json.dumps(info))
    problems = verify_shards(shards)
    assert len(problems) == 1 and "pickled" in problems[0]


def test_verify_rejects_info_names_that_escape_the_folder(bad_corpus_run, tmp_path):
    src, _ = bad_corpus_run
    shards = tmp_path / "shards"
    shutil.copytree(src / "shards", shards)
    info_path = shards / "test" / "_info.json"          # the corpus's official test split is never empty
    info = json.loads(info_path.read_text())
    assert info["shards"], "corpus produced an empty test split"
    info["shards"][0]["name"] = "../train/train-000000.tar"
    info_path.write_text(json.dumps(info))
    problems = verify_shards(shards)
    assert any("not a plain file name" in p for p in problems)
    from fermodels.shardsplit import open_split  # training and evaluation open splits this way

    with pytest.raises(UnsafeTarError, match="not a plain file name"):
        open_split([shards], "test")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            kw = {k.arg: k.value for k in node.keywords}
            yield node, owner, name, kw


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _safe_loader(kw: dict) -> bool:
    """``Loader=`` names yaml's SafeLoader or the project's subclass of it (checked here)."""
    from ferdata.params import ParamsLoader

    assert issubclass(ParamsLoader, yaml.SafeLoader)
    loader = kw.get("Loader")
    name = loader.attr if isinstance(loader, ast.Attribute) else getattr(loader, "id", "")
    return name in ("SafeLoader", "CSafeLoader", "ParamsLoader")


def unsafe_calls(path: Path, root: Path = REPO) -> list[str]:
    """Calls that could run attacker code on data: unpickling, unsafe YAML, shell=True."""
    found = []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for node, owner, name, kw in _calls(ast.parse(text)):
        where = f"{path.relative_to(root)}:{node.lineno}"
        if owner == "torch" and name == "load" and not _is_true(kw.get("weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load" and _is_true(kw.get("allow_pickle")):
            found.append(f"{where}: np.load(allow_pickle=True)")
        elif owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads") \
                and "# trusted: our own" not in lines[node.lineno - 1]:     # bytes this process pickled itself
            found.append(f"{where}: {owner}.{name}")
        elif owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all") and not _safe_loader(kw):
            found.append(f"{where}: yaml.{name} (use yaml.safe_load)")
        elif _is_true(kw.get("shell")) or (owner == "os" and name in ("system", "popen")):
            found.append(f"{where}: shell command ({owner}.{name})")
    return found


def test_no_unsafe_deserialisation_or_shell_in_the_code():
    files = [p for d in ("ferdata", "fermodels", "pipeline") for p in sorted((REPO / d).rglob("*.py"))]
    assert files
    assert [c for p in files for c in unsafe_calls(p)] == []


def test_only_a_pickle_marked_as_the_process_own_bytes_passes_the_check(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("import pickle\npickle.loads(b)\npickle.loads(b)  # trusted: our own\n"
                    "# trusted: our own\npickle.load(f)\n")
    assert unsafe_calls(code, tmp_path) == ["m.py:2: pickle.loads", "m.py:5: pickle.load"]


def test_the_check_tells_a_safe_yaml_loader_from_an_unsafe_one(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("import yaml\nyaml.load(t)\nyaml.load(t, Loader=yaml.Loader)\n"
                    "yaml.load(t, Loader=yaml.SafeLoader)\nyaml.load(t, Loader=ParamsLoader)\nyaml.full_load(t)\n")
    assert unsafe_calls(code, tmp_path) == [f"m.py:{n}: yaml.{f} (use yaml.safe_load)"
                                            for n, f in ((2, "load"), (3, "load"), (6, "full_load"))]
