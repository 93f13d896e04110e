"""`ferdata predict` writes its rows as it scores them: a long run stopped by Ctrl-C, an error or a kill
keeps what it scored (all rows were written at the end before, so every one was lost)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import pytest

import fermodels.predictor
from fermodels.predict import predict_files
from fermodels.predictions import PARTIAL, partial_path

N = 5


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    from skimage import data

    d = tmp_path_factory.mktemp("stream")
    face = data.astronaut()[..., ::-1]
    paths = [d / f"p{i}.jpg" for i in range(N)]
    for p in paths:
        cv2.imwrite(str(p), face)
    return paths


def _stop_at(monkeypatch, picture: int, seen: list, kind: type[BaseException] = KeyboardInterrupt,
             look: Path | None = None) -> None:
    """Predictor.faces raises ``kind`` on its ``picture``-th call; each call notes what ``look`` holds."""
    faces = fermodels.predictor.Predictor.faces

    def counted(self, *args, **kwargs):
        seen.append(look.read_text() if look is not None and look.exists() else None)
        if len(seen) == picture:
            raise kind("stopped by the test")
        return faces(self, *args, **kwargs)
    monkeypatch.setattr(fermodels.predictor.Predictor, "faces", counted)


def test_a_csv_run_stopped_midway_keeps_every_row_it_scored(pictures, tiny_run, tmp_path, monkeypatch, caplog,
                                                            one_thread):
    out = tmp_path / "rows.csv"
    seen: list = []
    _stop_at(monkeypatch, 4, seen, look=partial_path(out))
    with pytest.raises(KeyboardInterrupt):
        predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu",
                      batch_size=1, every=1)
    assert not out.exists()                     # the output's name holds only a whole run
    lines = list(csv.reader(io.StringIO(partial_path(out).read_text())))
    assert lines[0][:3] == ["source", "frame", "face"]
    assert [Path(r[0]).name for r in lines[1:]] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    # on disk as they were scored (a kill loses no written batch): picture 3 found the rows of 1 and 2 there
    assert [s.count("\n") - 1 for s in seen[1:]] == [1, 2, 3]
    assert "3 face row(s) scored so far" in caplog.text and PARTIAL in caplog.text


def test_a_json_run_stopped_by_an_error_leaves_what_it_scored_marked_incomplete(
        pictures, tiny_run, tmp_path, monkeypatch, one_thread):
    out = tmp_path / "rows.json"
    _stop_at(monkeypatch, 3, [], kind=RuntimeError)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu",
                      batch_size=1, every=1)
    assert not out.exists()
    left = json.loads(partial_path(out).read_text())
    assert left["complete"] is False
    assert [Path(f["source"]).name for f in left["faces"]] == ["p0.jpg", "p1.jpg"]
    assert len(left["images"]) == 2
    monkeypatch.undo()
    predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu", every=1)
    assert len(json.loads(out.read_text())["faces"]) == N and not partial_path(out).exists()   # replaced


def test_a_whole_run_renames_its_rows_to_the_output_and_streams_stdout_as_it_scores(
        pictures, tiny_run, tmp_path, monkeypatch, one_thread):
    out = tmp_path / "rows.csv"
    results = predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu",
                            batch_size=2, every=1)
    text = out.read_text()
    assert text.count("\n") == N + 1 and len(results.rows) == N
    assert not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]

    chunks: list[tuple[int, str]] = []
    seen: list = []
    _stop_at(monkeypatch, 0, seen)              # never stops: counts the pictures scored
    predict_files(pictures, tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu",
                  batch_size=2, every=1, stream=lambda s: chunks.append((len(seen), s)))
    assert "".join(s for _, s in chunks) == text
    assert chunks[1][0] < N                     # the first rows went out before the last picture was read


def test_an_interrupted_run_that_scored_nothing_leaves_no_partial_file(pictures, tiny_run, tmp_path, monkeypatch,
                                                                       one_thread):
    out = tmp_path / "rows.csv"
    _stop_at(monkeypatch, 1, [])
    with pytest.raises(KeyboardInterrupt):
        predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu", every=1)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_files_name_fits_the_file_systems_limit():
    long = Path("/x") / ("é" * 125 + ".csv")                # 254 bytes
    other = Path("/x") / ("é" * 124 + "a.csv")
    assert partial_path(Path("/x/rows.csv")) == Path("/x/rows.csv.partial")
    for p in (long, other):
        assert len(partial_path(p).name.encode()) <= 255 and partial_path(p).name.endswith(PARTIAL)
    assert partial_path(long) != partial_path(other)


def test_predict_into_a_pipe_whose_reader_left_stops_quietly(pictures, tiny_run, tmp_path):
    """`ferdata predict photos/ | head -1`: the rows now go out as they are scored, so the reader can leave
    mid-run; the command stops there, status 1, without a traceback or a "Broken pipe" error line."""
    import os
    import subprocess
    import sys

    from tests.fermodels.helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("FER_TRACEBACK", "PYTHONUNBUFFERED"):
        env.pop(name, None)
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as gone:
        run = subprocess.run([sys.executable, "-m", "ferdata.cli", "predict", *map(str, pictures), "--model",
                              str(tiny_run["ckpt"] / "best.pt"), "--backend", "embedded", "--device", "cpu"],
                             stdout=gone, stderr=subprocess.PIPE, cwd=tmp_path, env=env, text=True)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "pipe" not in run.stderr.lower(), run.stderr


def test_a_stopped_json_run_lists_only_the_pictures_whose_faces_it_scored(pictures, tiny_run, tmp_path, monkeypatch,
                                                                          one_thread):
    """Faces wait for a whole batch before they are scored: a .json stopped between batches listed in ``images``
    the pictures whose faces were found but never scored (up to a batch of them, ``faces`` 1 and no row), so
    a user resuming from its ``images`` skipped them."""
    out = tmp_path / "rows.json"
    _stop_at(monkeypatch, 4, [])                # pictures 0-2 read; with batches of 2, picture 2 still pending
    with pytest.raises(KeyboardInterrupt):
        predict_files(pictures, tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu",
                      batch_size=2, every=1)
    left = json.loads(partial_path(out).read_text())
    scored = [Path(f["source"]).name for f in left["faces"]]
    assert scored == ["p0.jpg", "p1.jpg"]
    assert [Path(i["source"]).name for i in left["images"]] == scored


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_folder_in_the_partial_files_place_is_refused_before_any_face_is_scored(pictures, tiny_run, tmp_path,
                                                                                  suffix, one_thread):
    """A .json run wrote its output whole and then failed (status 1) removing ``<out>.partial``, a folder;
    a .csv run failed opening it, each with an OSError after loading the model."""
    out = tmp_path / f"rows{suffix}"
    partial_path(out).mkdir()
    with pytest.raises(ValueError, match="partial is a folder"):
        predict_files(pictures[:1], tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu")
    assert not out.exists() and partial_path(out).is_dir()


def test_a_json_run_ended_by_sigterm_keeps_what_it_scored(pictures, tiny_run, tmp_path):
    """`kill`, `timeout` and a container's stop send SIGTERM, whose default action ended the process with
    a .json run's rows in memory: nothing was left, where README promises the rows of a run stopped by a
    kill. The run now ends as on Ctrl-C: ``.json.partial``, ``"complete": false``, status 143."""
    import os
    import signal
    import subprocess
    import sys

    from tests.fermodels.helpers import REPO

    many = tmp_path / "many"
    many.mkdir()
    for i in range(60):
        os.link(pictures[0], many / f"q{i:02d}.jpg")
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "ferdata.cli", "predict", str(many), "--model",
                            str(tiny_run["ckpt"] / "best.pt"), "--backend", "embedded", "--device", "cpu",
                            "--batch-size", "1", "--out", str(out), "-v"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=env, text=True)
    seen = 0
    for line in run.stderr:                     # -v: a line per picture read; stop after a few scored
        seen += "face(s)" in line
        if seen == 3:
            run.send_signal(signal.SIGTERM)
            break
    rest = run.stderr.read()
    assert run.wait(60) == 128 + signal.SIGTERM, rest
    left = json.loads(partial_path(out).read_text())
    assert left["complete"] is False and len(left["faces"]) >= 2 and not out.exists()


def test_a_second_run_writing_the_same_csv_is_refused_while_the_first_writes_it(pictures, tiny_run, tmp_path,
                                                                                one_thread):
    """Two runs of one --out (a cron job overrunning the next) opened one .partial: the second emptied it under
    the first, which renamed it with NUL bytes and lost rows as its output (status 0), and the second failed at
    its end, every row lost. A run now holds its partial file locked until it is renamed."""
    import fcntl
    import os

    out = tmp_path / "rows.csv"
    first = os.open(partial_path(out), os.O_WRONLY | os.O_CREAT)
    os.write(first, b"source,frame\n")
    fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)       # a run at work
    try:
        with pytest.raises(BlockingIOError, match="another `ferdata predict` is writing"):
            predict_files(pictures[:1], tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu")
        assert partial_path(out).read_bytes() == b"source,frame\n" and not out.exists()
    finally:
        os.close(first)
    predict_files(pictures[:1], tiny_run["ckpt"] / "best.pt", out=out, backend="embedded", device="cpu")
    assert out.read_text().count("\n") == 2 and not partial_path(out).exists()
