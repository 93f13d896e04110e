"""Crash safety: a stage killed at any point and re-run gives exactly the outputs of an
uninterrupted run; a stage never leaves a partial shard or stale chunks behind.

Stages commit to disk only through ``os.replace`` (each file is written to a temp name
first; the output folder is built beside the target and swapped in) and clean up with
``shutil.rmtree``, so the disk states a kill can leave are "just before the k-th of those
calls" plus temp files. The child process below is SIGKILLed at chosen k, while the
folder holds an older, different output.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ferdata.atomic import StageDirError, atomic_write_bytes
from ferdata.stages.align import run_align
from ferdata.stages.derive import run_derive
from ferdata.stages.detect import run_detect
from ferdata.stages.shard import run_shard
from ferdata.datasets import open_reader
from tests.reliability.corpus import child_env, stage_params, tree_hashes

CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from tests.reliability.test_atomic import run_stage
    stage, kill_at, src, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    calls = [0]

    def killing(real):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapper

    os.replace, shutil.rmtree = killing(os.replace), killing(shutil.rmtree)
    run_stage(stage, src, out, chunk=2)
    print(calls[0])
""")


def run_stage(stage: str, src: Path, out: Path, chunk: int) -> None:
    """One stage from the run in ``src`` (a run_all output folder) into ``out``."""
    p = stage_params(out.parent, chunk_size=chunk, maxcount=chunk)
    if stage == "align":
        run_align(src / "detect", p["align"], out)
    elif stage == "derive":
        run_derive(src / "aligned", p["derive"], out)
    else:
        run_shard(src / "aligned", src / "derived", p["shard"], out)


def run_child(stage: str, kill_at: int, src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, stage, str(kill_at), str(src), str(out)],
                          capture_output=True, text=True, env=child_env(), timeout=120)


def leftovers(out: Path) -> list[str]:
    """Temp files and staging folders next to or inside ``out``."""
    near = [p.name for p in out.parent.glob(f".{out.name}.*")]
    inside = [p.name for p in out.rglob(".*")] if out.exists() else []
    return near + inside


@pytest.mark.parametrize("stage", ["align", "derive", "shard"])
def test_killed_stage_reruns_to_identical_output(stage, bad_corpus_run, tmp_path):
    src, _ = bad_corpus_run
    reference = tmp_path / "reference" / "out"
    run_stage(stage, src, reference, chunk=2)
    old = tmp_path / "old" / "out"
    run_stage(stage, src, old, chunk=3)                        # an earlier, different complete output
    run_stage(stage, src, tmp_path / "count" / "out", chunk=3)
    full = run_child(stage, 0, src, tmp_path / "count" / "out")
    assert full.returncode == 0, full.stderr[-2000:]
    calls = int(full.stdout.split()[-1])
    for kill_at in sorted({1, calls // 2, calls - 1, calls}):
        out = tmp_path / f"kill{kill_at}" / "out"
        run_stage(stage, src, out, chunk=3)
        died = run_child(stage, kill_at, src, out)
        assert died.returncode == -9, died.stderr[-2000:]
        assert not out.exists() or tree_hashes(out) in (tree_hashes(old), tree_hashes(reference)), \
            f"mixed output after kill {kill_at}"
        run_stage(stage, src, out, chunk=2)
        assert tree_hashes(out) == tree_hashes(reference), f"kill at {kill_at}/{calls}"
        assert leftovers(out) == []


@pytest.mark.parametrize("stage", ["align", "derive", "shard"])
def test_rerun_over_a_larger_output_leaves_no_stale_chunks(stage, bad_corpus_run, tmp_path):
    src, _ = bad_corpus_run
    run_stage(stage, src, tmp_path / "fresh" / "out", chunk=8)
    out = tmp_path / "reused" / "out"
    run_stage(stage, src, out, chunk=1)                        # many chunks
    (out / ".aligned-000003.tar.x1y2.tmp").write_bytes(b"partial")
    run_stage(stage, src, out, chunk=8)                        # few chunks
    assert tree_hashes(out) == tree_hashes(tmp_path / "fresh" / "out")


def test_stage_refuses_a_folder_it_does_not_own(bad_corpus_run, tmp_path):
    src, _ = bad_corpus_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(StageDirError, match="thesis.tex"):
        run_stage("align", src, out, chunk=2)
    assert (out / "thesis.tex").read_text() == "precious"


def test_shard_refuses_files_it_did_not_write_inside_its_split_folders(bad_corpus_run, tmp_path):
    """The shard stage owned train/, val/ and test/ whole: a user's train/NOTES.txt, a tar added by
    hand, or an image dataset's class folders given as the output were deleted without a word."""
    import shutil

    src, _ = bad_corpus_run
    out = tmp_path / "shards"
    run_stage("shard", src, out, chunk=2)
    own = tree_hashes(out)
    for rel in ("train/NOTES.txt", "train/rafdb-extra-000000.tar", "test/Happy/1.png", "val/train-000000.tar"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"precious")
        with pytest.raises(StageDirError, match=rel.split("/")[0] + "/" + rel.split("/")[1]):
            run_stage("shard", src, out, chunk=2)
        assert (out / rel).read_bytes() == b"precious"
        shutil.rmtree(out / rel) if (out / rel).is_dir() else (out / rel).unlink()
        if rel.startswith("test/Happy"):
            (out / "test" / "Happy").rmdir()
    (out / "train" / ".train-000000.tar.x1y2.tmp").write_bytes(b"left by a killed writer")
    run_stage("shard", src, out, chunk=2)                          # its own output, and temp files: replaced
    assert tree_hashes(out) == own


def test_a_mount_point_as_output_is_refused_before_the_work(tmp_path, monkeypatch):
    """Renaming a mount point fails (EBUSY): the stage did all its work, then failed, leaving a full
    staging copy (a Docker volume at data/<name>/shards)."""
    from ferdata.atomic import staged_dir

    out = tmp_path / "derived"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    with pytest.raises(StageDirError, match="is a mount point"):
        with staged_dir(out, ("derived-*.tar",)):
            pytest.fail("the work ran into a folder that cannot be swapped in")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="bind-mounts in a private namespace: root")
def test_a_bind_mount_of_the_same_file_system_as_output_is_refused_before_the_work(tmp_path):
    """os.path.ismount compares a folder with its parent: a bind mount from the same file system
    (`mount --bind`, a Docker volume from the project's disk) passed, and the stage failed with
    EBUSY after all its work."""
    script = textwrap.dedent(f"""
        import os, subprocess
        from ferdata.atomic import StageDirError, staged_dir
        os.makedirs("{tmp_path}/store/out"); os.makedirs("{tmp_path}/proj/out")
        subprocess.run(["mount", "--bind", "{tmp_path}/store/out", "{tmp_path}/proj/out"], check=True)
        os.symlink("{tmp_path}/proj/out", "{tmp_path}/link")          # a stage works on the folder a link names
        try:
            for out in ("{tmp_path}/proj/out", "{tmp_path}/link"):
                try:
                    staged_dir(out, ("report.json",)).check_owned()
                    print("passed")
                except StageDirError as e:
                    print("refused:", e)
        finally:
            subprocess.run(["umount", "{tmp_path}/proj/out"])
        """)
    run = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script],
                         capture_output=True, text=True, env=child_env(), timeout=120)
    if run.returncode != 0 and "unshare" in run.stderr:
        pytest.skip(f"no private mount namespace here: {run.stderr.strip()}")
    told = run.stdout.splitlines()
    assert len(told) == 2, run.stdout + run.stderr
    assert all(line.startswith(f"refused: {tmp_path}/proj/out is a mount point") for line in told), run.stdout


def test_a_swap_that_fails_keeps_the_old_output_and_leaves_no_staging_copy(tmp_path, monkeypatch):
    import errno

    from ferdata.atomic import staged_dir

    out = tmp_path / "derived"
    out.mkdir()
    (out / "report.json").write_text("old")
    real = os.replace
    for failing in (out, tmp_path / ".derived.partial"):               # the first rename, then the second
        def busy(src, dst, *a, **k):
            if Path(src) == failing:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
            return real(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", busy)
        with pytest.raises(OSError, match="busy"):
            with staged_dir(out, ("derived-*.tar", "report.json")) as tmp:
                (tmp / "report.json").write_text("new")
        assert (out / "report.json").read_text() == "old" and sorted(os.listdir(out)) == ["report.json"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["derived"]      # no .derived.partial or .old left


def test_shard_refuses_derived_fields_made_from_another_aligned_output(bad_corpus_run, tmp_path):
    """Align re-run (224 px) without derive, e.g. a `ferdata prepare` stopped between the two, then
    shard: the shards mixed 224 px crops with halves and heatmaps of the old 112 px ones, and
    ``_info.json`` claimed 224. Derive records the aligned output it read; shard compares."""
    from ferdata.stages.align import AlignParams
    from tests.reliability.corpus import build

    src, _ = bad_corpus_run
    p = stage_params(tmp_path)
    run_align(src / "detect", p["align"], tmp_path / "aligned")
    run_derive(tmp_path / "aligned", p["derive"], tmp_path / "derived")
    run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")   # in step: fine
    run_align(src / "detect", build(AlignParams, "align", size=224, workers=1), tmp_path / "aligned")
    before = tree_hashes(tmp_path / "shards")
    with pytest.raises(ValueError, match="derived from another output of the align stage .* run the derive stage"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")
    assert tree_hashes(tmp_path / "shards") == before                 # the earlier shards stay
    run_derive(tmp_path / "aligned", p["derive"], tmp_path / "derived")
    run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")


def test_shard_sees_an_aligned_output_changed_in_content_but_not_in_size(bad_corpus_run, tmp_path, monkeypatch):
    """Align re-run by code that moves the landmarks a quarter pixel: every member and chunk keeps its
    size, so a digest of the report and chunk sizes alone took it for the output derive read (the
    heatmaps and halves of the old landmarks were sharded with the new ones). Align records its
    chunks' content digest in its report; shard refuses until derive runs again."""
    import hashlib

    import ferdata.stages.align as align

    src, _ = bad_corpus_run
    p = stage_params(tmp_path)
    run_align(src / "detect", p["align"], tmp_path / "aligned")
    chunks = sorted((tmp_path / "aligned").glob("aligned-*.tar"))
    sizes = [c.stat().st_size for c in chunks]
    digest = hashlib.sha256()
    for c in chunks:
        digest.update(f"{c.name}\0{hashlib.sha256(c.read_bytes()).hexdigest()}\0".encode())
    report = (tmp_path / "aligned" / "report.json").read_text()
    assert digest.hexdigest() in report                                 # the chunks' own content, as written
    run_derive(tmp_path / "aligned", p["derive"], tmp_path / "derived")
    real = align.npy_bytes
    monkeypatch.setattr(align, "npy_bytes", lambda a: real(a + 0.25))
    run_align(src / "detect", p["align"], tmp_path / "aligned")
    assert [c.stat().st_size for c in sorted((tmp_path / "aligned").glob("aligned-*.tar"))] == sizes
    with pytest.raises(ValueError, match="derived from another output of the align stage"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")


@pytest.mark.parametrize("swapped, after, call, cut", [(("derived",), "stage_settings", 1, False),
                                                       (("derived",), "stage_settings", 1, True),
                                                       (("aligned", "derived"), "index_chunks", 2, False)],
                         ids=["derived-before-the-writes", "cut-short-before-the-writes",
                              "both-before-the-metadata-pass"])
def test_shard_refuses_inputs_replaced_while_it_reads_them(bad_corpus_run, tmp_path, monkeypatch, swapped, after,
                                                           call, cut):
    """Shard indexes the chunks (byte offsets), then reads them: the records' metadata, then every
    member as it writes. Another `ferdata prepare` run swapping its outputs in meanwhile gave shards
    of undecodable heatmaps and halves that `ferdata verify` passed (a derive output with another
    heatmap_sigma, before the writes), a bare tar error (chunks shorter than the offsets indexed),
    or a bare "'utf-8' codec can't decode" (both outputs, before the metadata pass)."""
    from ferdata.tario import BadTarError

    import dataclasses
    import shutil

    import ferdata.stages.shard as shard

    src, _ = bad_corpus_run
    p = stage_params(tmp_path)
    run_align(src / "detect", p["align"], tmp_path / "aligned")
    run_derive(tmp_path / "aligned", p["derive"], tmp_path / "derived")
    run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")
    before = tree_hashes(tmp_path / "shards")
    if "aligned" in swapped:
        run_align(src / "detect", dataclasses.replace(p["align"], jpeg_quality=p["align"].jpeg_quality - 30),
                  tmp_path / "other_aligned")
        run_derive(tmp_path / "other_aligned", p["derive"], tmp_path / "other_derived")
    elif cut:
        shutil.copytree(tmp_path / "derived", tmp_path / "other_derived")
        for tar in (tmp_path / "other_derived").glob("*.tar"):
            tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 4])
    else:
        run_derive(tmp_path / "aligned", dataclasses.replace(p["derive"], heatmap_sigma=p["derive"].heatmap_sigma * 2),
                   tmp_path / "other_derived")
    real, calls = getattr(shard, after), []

    def swapping(*args):                            # the other run's swaps, right after this call
        out = real(*args)
        calls.append(1)
        if len(calls) == call:
            for name in swapped:
                shutil.move(tmp_path / name, tmp_path / f"{name}.old")
                shutil.copytree(tmp_path / f"other_{name}", tmp_path / name)
        return out

    monkeypatch.setattr(shard, after, swapping)
    with pytest.raises(ValueError, match="aligned or .*derived was replaced while the shard stage read it .* no "
                                         "shards were written; run the shard stage again") as caught:
        run_shard(tmp_path / "aligned", tmp_path / "derived", p["shard"], tmp_path / "shards")
    assert isinstance(caught.value.__cause__, BadTarError) == cut       # the read's own error, where one failed
    assert tree_hashes(tmp_path / "shards") == before                 # the earlier shards stay


def test_detect_rerun_clears_temp_files_of_a_killed_run(bad_corpus, tmp_path):
    root, _ = bad_corpus
    params = stage_params(tmp_path)["detect"]
    run_detect(open_reader("affectnet", root).read(), params, tmp_path / "ref")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".faces.jsonl.gz.k1ll3d.tmp").write_bytes(b"\x1f\x8b half a table")
    run_detect(open_reader("affectnet", root).read(), params, tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "ref")


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old")
    code = ("import os, signal, sys\nfrom ferdata.atomic import atomic_open\n"
            "with atomic_open(sys.argv[1]) as f:\n    f.write(b'new but incomplete')\n"
            "    f.flush()\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=child_env(), timeout=60)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["data.bin"]


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    """The second run deleted the first's staging folder under it: both reported success and the
    output lacked most of its chunks."""
    from ferdata.atomic import staged_dir

    out = tmp_path / "derived"
    with staged_dir(out, ("*.tar",)) as first:
        (first / "a.tar").write_bytes(b"first")
        with pytest.raises(StageDirError, match=r"another run is writing .*derived now \(it holds .derived.partial"):
            with staged_dir(out, ("*.tar",)):
                pass
        assert (first / "a.tar").read_bytes() == b"first"
    assert sorted(p.name for p in out.iterdir()) == ["a.tar"]
    stale = tmp_path / ".derived.partial"                  # what a killed run leaves: taken over, emptied
    stale.mkdir()
    (stale / "b.tar").write_bytes(b"stale")
    with staged_dir(out, ("*.tar",)) as again:
        assert not any(again.iterdir())
        (again / "c.tar").write_bytes(b"again")
    assert sorted(p.name for p in out.iterdir()) == ["c.tar"] and not stale.exists()


def test_a_temp_file_another_writer_is_writing_is_not_removed(tmp_path):
    """Temp files of killed writers are removed when a write starts; one still being written (by
    another process: its lock is held) was removed too, and that writer failed."""
    from ferdata.atomic import atomic_open

    target = tmp_path / "metrics.json"
    with atomic_open(target) as first:
        first.write(b"first")
        atomic_write_bytes(target, b"second")
        first.write(b" writer")
    assert target.read_bytes() == b"first writer"
    leftover = tmp_path / f".{target.name}.dead.tmp"       # a killed writer's: no lock held
    leftover.write_bytes(b"x")
    atomic_write_bytes(target, b"third")
    assert not leftover.exists() and target.read_bytes() == b"third"


def test_a_failed_write_names_its_file(tmp_path):
    import errno

    from ferdata.atomic import atomic_open
    from ferdata.errors import message

    with pytest.raises(OSError) as caught:
        with atomic_open(tmp_path / "out.bin") as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert message(caught.value) == f"[Errno 28] No space left on device (while writing {tmp_path / 'out.bin'})"
    assert not list(tmp_path.iterdir())


def test_a_writer_starting_as_another_renames_leaves_it_its_file(tmp_path, monkeypatch):
    """The temp file's lock was released (closed) before the rename: a second writer of the same
    path starting in between removed the finished temp file, and the first write failed."""
    import ferdata.atomic as atomic

    target = tmp_path / "metrics.json"
    real_replace = os.replace

    def another_writer_starts_first(src, dst):
        atomic._remove_stale_temps(target)            # what a second atomic_open(target) does first
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", another_writer_starts_first)
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"


def test_a_run_killed_between_its_two_renames_keeps_the_previous_output_for_the_next(tmp_path):
    """Killed after moving the old output aside (``.<out>.old``) and before moving the new one in,
    a run left no ``out``; the next run deleted ``.old`` before doing any work, so a failure of that
    run lost both complete outputs. The old one is moved back first and kept until a run succeeds."""
    from ferdata.atomic import staged_dir

    out = tmp_path / "aligned"
    with staged_dir(out, ("*.tar",)) as first:
        (first / "a.tar").write_bytes(b"previous")
    old, partial = tmp_path / ".aligned.old", tmp_path / ".aligned.partial"
    os.replace(out, old)                                   # the killed run's first rename
    partial.mkdir()
    (partial / "a.tar").write_bytes(b"new, never moved in")
    with pytest.raises(RuntimeError, match="the next run fails"):
        with staged_dir(out, ("*.tar",)):
            raise RuntimeError("the next run fails")
    assert (out / "a.tar").read_bytes() == b"previous" and not old.exists() and not partial.exists()


def test_an_old_output_that_cannot_be_removed_is_named(tmp_path, caplog, monkeypatch):
    """A read-only previous output was left as ``.<out>.old`` inside the data folder without a word."""
    import ferdata.atomic as atomic

    out = tmp_path / "derived"
    with atomic.staged_dir(out, ("*.tar",)) as first:
        (first / "a.tar").write_bytes(b"one")
    real = atomic.shutil.rmtree

    def refuse_old(path, ignore_errors=False):
        if Path(path).name != ".derived.old":
            real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(atomic.shutil, "rmtree", refuse_old)
    with caplog.at_level("WARNING", logger="ferdata.atomic"):
        with atomic.staged_dir(out, ("*.tar",)) as second:
            (second / "b.tar").write_bytes(b"two")
    assert sorted(p.name for p in out.iterdir()) == ["b.tar"]
    assert "could not remove" in caplog.text and ".derived.old" in caplog.text
    # the next run stops before its work (its swap would fail at the end), naming the folder
    with pytest.raises(StageDirError, match=r"\.derived\.old \(an earlier output\) cannot be removed"):
        with atomic.staged_dir(out, ("*.tar",)):
            pytest.fail("the run started its work")
    monkeypatch.undo()
    with atomic.staged_dir(out, ("*.tar",)) as third:        # removable again, and no lock left held
        (third / "c.tar").write_bytes(b"three")
    assert sorted(p.name for p in out.iterdir()) == ["c.tar"]


@pytest.mark.parametrize("mask", [0o077, 0o002, 0o022])
def test_a_written_file_has_the_mode_open_would_give_it(tmp_path, mask):
    """A fixed 0o644 made every output world-readable under umask 077 (licensed face data, kept by
    `cp -p` and tar) and not group-writable under umask 002 (a shared group folder)."""
    import stat

    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "out.json", b"{}")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out.json").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_the_longest_legal_file_name_can_be_written(tmp_path):
    """A 250-byte name is legal (255 is the limit), but the temp file beside it (".<name>.<8
    random>.tmp", 14 bytes more) was not: `ferdata show -o <that name>` failed with "File name too
    long" naming a temp file the user never gave."""
    target = tmp_path / ("b" * 246 + ".png")
    atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
