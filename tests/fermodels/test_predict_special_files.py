"""Pipes and devices named as pictures in ``ferdata predict``'s inputs (audit h64)."""
from __future__ import annotations

import logging
import os

import pytest

from fermodels.predict import expand_inputs


def test_pipes_and_devices_in_a_folder_are_skipped_and_counted_not_read(tmp_path, caplog):
    """A FIFO named ``x.jpg`` in a folder given to predict hung the run for ever (reading it waits
    for a writer); a link ``z.jpg -> /dev/zero`` read until memory ran out. The dataset readers
    count such entries as ``not_an_image`` already."""
    (tmp_path / "ok.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")      # a link to nothing: told when read
    with caplog.at_level(logging.WARNING):
        found = expand_inputs([tmp_path])
    assert sorted(p.name for p in found) == ["gone.jpg", "ok.jpg"]
    assert "2 pipe(s), socket(s) or device(s) skipped" in caplog.text


def test_a_pipe_given_by_name_is_said_to_be_one(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(ValueError, match="not a regular file"):
        expand_inputs([tmp_path / "fifo.jpg"])
