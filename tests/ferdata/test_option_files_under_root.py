"""Reader options that name a file (options.subsets lists, FERPlus's fer2013_csv, FER2013's csv) must lie under
the dataset root: dvc.yaml's detect@<ds> depends on ${item.root} alone, so a file read from elsewhere could
change without `dvc repro` preparing the dataset again (the shards kept the old subsets or labels)."""
from __future__ import annotations

import os
import shutil

import pytest

from ferdata.datasets.subsets import under_root
from tests.ferdata.fixtures_datasets import make_ferplus, make_rafdb, read_all, write_text


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_subset_list_outside_the_root_is_refused(tmp_path, where):
    root = make_rafdb(tmp_path / "RAF-DB") and tmp_path / "RAF-DB"
    occ = write_text(tmp_path / "lists" / "occlusion_list.txt", "test_0001_aligned 3 4\n")
    name = str(occ) if where == "absolute" else "../lists/occlusion_list.txt"
    with pytest.raises(ValueError, match="outside the dataset root"):
        read_all("rafdb", root, {"subsets": {"occlusion": name}})


def test_subset_list_under_the_root_still_reads(tmp_path):
    root = tmp_path / "RAF-DB"
    make_rafdb(root)
    occ = write_text(root / "lists" / "occlusion_list.txt", "test_0001_aligned 3 4\n")
    for name in ("lists/occlusion_list.txt", str(occ), "lists/../lists/occlusion_list.txt"):
        records, _, _ = read_all("rafdb", root, {"subsets": {"occlusion": name}})
        assert records["test_0001"].extra["subsets"] == ("occlusion",)


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_ferplus_fer2013_csv_outside_the_root_is_refused(tmp_path, where):
    root = tmp_path / "FERPlus"
    make_ferplus(root)
    (tmp_path / "FER2013").mkdir()
    fer = shutil.move(str(root / "fer2013.csv"), tmp_path / "FER2013" / "fer2013.csv")
    name = str(fer) if where == "absolute" else "../FER2013/fer2013.csv"
    with pytest.raises(ValueError, match="options.fer2013_csv .* outside the dataset root"):
        read_all("ferplus", root, {"fer2013_csv": name})


def test_a_file_in_a_symlinked_root_named_by_its_real_path_is_inside(tmp_path):
    """raw/RAF-DB -> /disk/RAF-DB: /disk/RAF-DB/lists/occ.txt is the root's file to DVC; /disk/other.txt is not."""
    real = tmp_path / "disk" / "RAF-DB"
    (real / "lists").mkdir(parents=True)
    (real / "lists" / "occ.txt").write_text("x\n")
    (tmp_path / "raw").mkdir()
    os.symlink(real, tmp_path / "raw" / "RAF-DB")
    root = tmp_path / "raw" / "RAF-DB"
    assert under_root(str(real / "lists" / "occ.txt"), root, "o").samefile(root / "lists" / "occ.txt")
    (tmp_path / "disk" / "other.txt").write_text("x\n")
    with pytest.raises(ValueError, match="outside the dataset root"):
        under_root(str(tmp_path / "disk" / "other.txt"), root, "o")
    with pytest.raises(ValueError, match="outside the dataset root"):
        under_root("../../disk/other.txt", root, "o")
