"""`ferdata cache prune --dry-run` ("Say what would be dropped; change nothing") reads the cache
read-only (audit h134)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ferdata.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_a_dry_run_leaves_the_cache_file_as_it_was(tmp_path):
    """It opened the cache to write (turned the file to WAL, made its table, committed): a cache in
    another journal mode (made by an older release or by hand) was rewritten, and one on read-only
    media or of another user was refused ("attempt to write a readonly database")."""
    cache = tmp_path / "cache" / "detections.sqlite"
    cache.parent.mkdir()
    db = sqlite3.connect(cache)
    db.execute("CREATE TABLE det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")
    db.executemany("INSERT INTO det VALUES (?, ?, '{}')", [("a", "embedded:v2:old"), ("b", "embedded:v2:old")])
    db.commit()
    db.close()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"]["cache_dir"] = str(cache.parent)
    params["datasets"] = {"mine": {"reader": "folder", "root": str(tmp_path / "faces"), "options": {}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    before = hashlib.sha256(cache.read_bytes()).hexdigest()
    res = CliRunner().invoke(app, ["cache", "prune", "--params", str(tmp_path / "p.yaml"), "--dry-run"])
    assert res.exit_code == 0 and "would drop 2, kept 0" in res.output and "embedded:v2:old" in res.output, res.output
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == before, "a dry run rewrote the cache file"
