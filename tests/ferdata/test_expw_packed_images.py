"""ExpW ships its images as a multi-volume archive (``image/origin.7z.001`` ...); a root where it was not
unpacked read every face as a ``missing_image`` drop, naming no archive (audit h122)."""
import pytest

from ferdata.datasets.base import DatasetLayoutError
from tests.ferdata.fixtures_datasets import make_expw, read_all


def test_images_still_in_their_archive_are_named_with_the_fix(tmp_path):
    make_expw(tmp_path)
    origin = tmp_path / "image" / "origin"
    for image in origin.iterdir():
        image.unlink()
    origin.rmdir()
    for part in ("001", "002"):
        (tmp_path / "image" / f"origin.7z.{part}").write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(DatasetLayoutError, match=r"7z x .*origin\.7z\.001"):
        read_all("expw", tmp_path)


def test_an_unpacked_origin_folder_is_read_beside_its_archive(tmp_path):
    make_expw(tmp_path)
    (tmp_path / "image" / "origin.7z.001").write_bytes(b"7z\xbc\xaf\x27\x1c")
    records, _, _ = read_all("expw", tmp_path)
    assert len(records) == 3


def test_images_unpacked_flat_beside_their_archive_are_read(tmp_path):
    """``image/`` holding the pictures (``7z e``) and the volumes was refused as not unpacked (audit h125)."""
    make_expw(tmp_path)
    for image in (tmp_path / "image" / "origin").iterdir():
        image.rename(tmp_path / "image" / image.name)
    (tmp_path / "image" / "origin").rmdir()
    (tmp_path / "image" / "origin.7z.001").write_bytes(b"7z\xbc\xaf\x27\x1c")
    records, _, _ = read_all("expw", tmp_path)
    assert len(records) == 3


def test_an_archive_at_the_root_without_an_image_folder_is_named_with_the_fix(tmp_path):
    make_expw(tmp_path)
    for image in (tmp_path / "image" / "origin").iterdir():
        image.unlink()
    (tmp_path / "image" / "origin").rmdir()
    (tmp_path / "image").rmdir()
    (tmp_path / "origin.7z.001").write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(DatasetLayoutError, match=r"7z x .*origin\.7z\.001"):
        read_all("expw", tmp_path)


def test_an_empty_origin_folder_beside_the_archive_is_named_with_the_fix(tmp_path):
    make_expw(tmp_path)
    for image in (tmp_path / "image" / "origin").iterdir():
        image.unlink()
    (tmp_path / "image" / "origin.7z.001").write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(DatasetLayoutError, match=r"7z x .*origin\.7z\.001"):
        read_all("expw", tmp_path)
