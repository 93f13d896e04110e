"""A Mac's ``.DS_Store`` beside JAFFE's images is no sample: the folder reader, CK+ and SFEW leave it
out, JAFFE counted it as a dropped ``hidden_file`` (audit h122)."""
from tests.ferdata.fixtures_datasets import make_jaffe, read_all


def test_a_ds_store_beside_the_images_is_not_counted(tmp_path):
    make_jaffe(tmp_path)
    _, before, _ = read_all("jaffe", tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    records, drops, _ = read_all("jaffe", tmp_path)
    assert len(records) == 7 and drops == before and "hidden_file" not in drops
