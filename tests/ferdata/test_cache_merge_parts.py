"""`ferdata cache merge` tells which parts of a dataset (`ferdata detect --part K/N`) the merged cache lacks:
a machine's cache not copied, a part killed before its end, or parts given with another N were merged without
a word, and `dvc repro` then detected those images on the one machine (hours on AffectNet) (audit h140)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ferdata.cache import Detection, DetectionCache
from ferdata.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_parts_missing_in_words():
    from ferdata.parts import parts_missing

    assert parts_missing(["1/3", "2/3", "3/3"]) == ""
    assert parts_missing(["1/3", "3/3"]).startswith("2/3 missing")
    assert parts_missing(["1/1"]) == ""
    assert "different splits" in parts_missing(["1/2", "2/3"])
    assert parts_missing(["2/2", "1/3", "2/3", "3/3"]) == ""     # a split whole covers every record
    assert parts_missing(["1/2", "2/4", "4/4"]) == ""       # hash % 2 == 0, then % 4 == 1 and 3: every record
    assert "leave gaps" in parts_missing(["1/2", "2/4"])


def test_merge_copies_the_parts_and_prune_drops_those_of_dropped_signatures(tmp_path):
    det = Detection((4, 4), ())
    for k in (1, 2):
        with DetectionCache(tmp_path / f"m{k}") as c:
            c.put(f"sha{k}", "sigA", det)
            c.record_part("sample", "sigA", f"{k}/3")
    with DetectionCache(tmp_path / "old") as c:             # a cache of before the parts table: merges as before
        c.put("sha9", "sigB", det)
        c.db.execute("DROP TABLE parts")
    with DetectionCache(tmp_path / "main") as main:
        for k in (1, 2):
            main.merge(tmp_path / f"m{k}")
        assert main.merge(tmp_path / "old").added == 1
        assert main.parts() == {("sample", "sigA"): {"1/3", "2/3"}}
        main.prune(["sigB"])
        assert main.parts() == {}


def test_cache_merge_names_the_part_not_merged(tmp_path, photo_paths):
    import cv2

    root = tmp_path / "faces"
    for i, src in enumerate(sorted(photo_paths.values())):
        image = cv2.imread(str(src))
        for label, pixels in (("happy", image), ("neutral", image[:, ::-1])):
            (root / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / label / f"{i}.jpg"), pixels)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    runner = CliRunner()
    for k in (1, 3):                                         # machine 2's part is never run (or never copied)
        params["detect"]["cache_dir"] = str(tmp_path / f"machine{k}")
        (tmp_path / f"p{k}.yaml").write_text(yaml.safe_dump(params))
        res = runner.invoke(app, ["detect", "folder", "--root", str(root), "--part", f"{k}/3",
                                  "--params", str(tmp_path / f"p{k}.yaml")])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "machine3"), "--into", str(tmp_path / "machine1")])
    assert res.exit_code == 0, res.output
    assert "folder: parts 1/3, 3/3 detected; 2/3 missing" in res.output, res.output
    res = runner.invoke(app, ["detect", "folder", "--root", str(root), "--part", "2/3",
                              "--params", str(tmp_path / "p1.yaml")])            # the part run after all
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cache", "merge", str(tmp_path / "machine3"), "--into", str(tmp_path / "machine1")])
    assert "folder: parts 1/3, 2/3, 3/3 detected: the whole dataset" in res.output, res.output


def test_cache_merge_warns_of_entries_no_dataset_here_uses(tmp_path):
    """A part run with another det_size (or backend, or face package release) merges entries `dvc repro` cannot use:
    said at the merge, not after the main machine has detected the part's images again."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = str(tmp_path / "main")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with DetectionCache(tmp_path / "m2") as c:
        c.put("sha1", "embedded:v3:det_size=480,other", Detection((4, 4), ()))
    res = CliRunner().invoke(app, ["cache", "merge", str(tmp_path / "m2"), "--params", str(tmp_path / "p.yaml")])
    assert res.exit_code == 0, res.output
    assert "warning: 1 of its entries were detected with a backend signature no dataset" in res.output, res.output


def test_a_killed_runs_cache_copied_without_its_wal_is_named_so(tmp_path):
    """A part killed early holds every detection in detections.sqlite-wal; the file copied alone was called
    "not a ferdata detection cache (no such table: det)", which sent the user after a damaged file."""
    import shutil
    import sqlite3

    from ferdata.cache import readable_cache

    (tmp_path / "m2").mkdir()
    db = sqlite3.connect(tmp_path / "m2" / "detections.sqlite")       # as a killed run leaves it: WAL, never
    db.execute("PRAGMA journal_mode=WAL")                               # checkpointed (the table in the WAL only)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")
    db.commit()
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "m2" / "detections.sqlite", tmp_path / "copy")              # the -wal left behind
    db.close()
    with pytest.raises(ValueError, match="entries are all in its detections.sqlite-wal, not copied with it"):
        readable_cache(tmp_path / "copy")
    other = tmp_path / "other.sqlite"                                    # an unrelated database: said as before
    sqlite3.connect(other).execute("CREATE TABLE foo (a)").connection.commit()
    with pytest.raises(ValueError, match="is not a ferdata detection cache"):
        readable_cache(other)


def test_another_programs_wal_database_is_not_called_a_cache_without_its_wal(tmp_path):
    """A WAL-mode SQLite file of another program (its own tables in it, nothing in a -wal) was told to be a
    detection cache whose entries were left in a -wal, and to be copied again with it."""
    import sqlite3

    from ferdata.cache import readable_cache

    (tmp_path / "other").mkdir()
    db = sqlite3.connect(tmp_path / "other" / "detections.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE places (url TEXT)")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with pytest.raises(ValueError, match="is not a ferdata detection cache") as err:
        readable_cache(tmp_path / "other")
    assert "-wal" not in str(err.value)
