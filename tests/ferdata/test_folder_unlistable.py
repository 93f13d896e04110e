"""A folder of a folder dataset that cannot be listed stops the read, saying what to do (audit h141)."""
from __future__ import annotations

import os

import pytest

from ferdata.datasets import open_reader
from tests.ferdata.fixtures_datasets import write_image


def test_a_folder_that_cannot_be_listed_stops_the_read_saying_what_to_do(tmp_path, monkeypatch):
    """A folder under a class that cannot be listed (no read permission) stops the run (its images can be
    neither read nor counted), and the error says so and how to fix it; it was only "[Errno 13] Permission
    denied: '<folder>'" (audit h141). As root a chmod 000 folder is still listed: the walk's error is made."""
    from ferdata.errors import message

    write_image(tmp_path / "happy" / "a.jpg")
    (tmp_path / "happy" / "private").mkdir()
    walk = os.walk

    def refusing(top, onerror=None, **kwargs):
        for step in walk(top, onerror=onerror, **kwargs):
            if step[0].endswith("private"):
                onerror(PermissionError(13, "Permission denied", step[0]))
                return
            yield step

    monkeypatch.setattr(os, "walk", refusing)
    with pytest.raises(PermissionError) as err:
        list(open_reader("folder", tmp_path).read())
    said = message(err.value)
    assert said.startswith("[Errno 13] Permission denied:") and "cannot be listed" in said
    assert f"chmod -R u+rX {tmp_path / 'happy' / 'private'}" in said and f"move it out of {tmp_path}" in said


def test_a_folder_gone_since_its_parent_was_listed_is_not_told_to_be_given_read_access(tmp_path):
    """A class folder removed while the dataset is read (or a folder not there) was told to be chmod-ed."""
    from ferdata.datasets.folder import visible_files
    from ferdata.errors import message

    with pytest.raises(FileNotFoundError) as err:
        visible_files(tmp_path / "gone")
    assert "chmod" not in message(err.value) and "gone since its parent was listed" in message(err.value)
