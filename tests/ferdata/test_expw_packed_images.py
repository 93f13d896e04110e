"""ExpW ships its images as a multi-volume archive (``image/origin.7z.001`` ...); a root where it was not
unpacked read every face as a ``missing_image`` drop, naming no archive (audits h122, h125)."""
import pytest

from ferdata.datasets.base import DatasetLayoutError
from tests.ferdata.fixtures_datasets import make_expw, read_all

VOLUME = b"7z\xbc\xaf\x27\x1c"      # a 7z signature: the first volume's first bytes


def _expw(root, pictures: str, archive: str = "image") -> None:
    """ExpW's fixture with its pictures in ``image/origin/`` (``origin``), moved up into ``image/`` (``flat``,
    as ``7z e`` leaves them), gone with ``image/origin/`` left empty (``empty``) or gone with their folders
    (``none``); and the archive's first volume in ``archive`` (``image`` or the root, ``.``)."""
    make_expw(root)
    origin = root / "image" / "origin"
    if pictures != "origin":
        for image in origin.iterdir():
            if pictures == "flat":
                image.rename(root / "image" / image.name)
            else:
                image.unlink()
    if pictures in ("flat", "none"):
        origin.rmdir()
    if pictures == "none" and archive == ".":
        (root / "image").rmdir()
    (root / archive / "origin.7z.001").write_bytes(VOLUME)


@pytest.mark.parametrize("pictures, archive", [("none", "image"), ("none", "."), ("empty", "image")])
def test_images_still_in_their_archive_are_named_with_the_fix(tmp_path, pictures, archive):
    _expw(tmp_path, pictures, archive)
    with pytest.raises(DatasetLayoutError, match=r"7z x .*origin\.7z\.001"):
        read_all("expw", tmp_path)


@pytest.mark.parametrize("pictures", ["origin", "flat"])
def test_unpacked_images_are_read_beside_their_archive(tmp_path, pictures):
    """``image/`` holding the pictures (``7z e``) beside the volumes was refused as not unpacked (h125)."""
    _expw(tmp_path, pictures)
    records, _, _ = read_all("expw", tmp_path)
    assert len(records) == 3
