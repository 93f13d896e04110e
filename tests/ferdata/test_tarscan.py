"""The fast tar scanner (ferdata.tarscan): max_size on every reading path, GNU long names followed
by short ones, and a member cut short when it is not read."""
from __future__ import annotations

import io
import tarfile

import pytest

from ferdata.tarscan import BLOCK, iter_members


def archive(members, fmt=tarfile.GNU_FORMAT, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [("a.jpg", b"x" * 100), ("b.json", b"y" * 101), ("c.cls", b"z" * 99)]


@pytest.mark.parametrize("reader", ["path", "file object", "gzip path"])
def test_a_member_over_max_size_is_not_read_and_one_of_exactly_max_size_is(tmp_path, reader):
    """The whole-file table, the block scanner and tarfile each hand out data up to max_size only."""
    data = archive(MEMBERS, mode="w:gz" if reader == "gzip path" else "w")
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    source = io.BytesIO(data) if reader == "file object" else path
    got = {m.name: d for m, d in iter_members(source, max_size=100)}
    assert got == {"a.jpg": b"x" * 100, "b.json": None, "c.cls": b"z" * 99}


@pytest.mark.parametrize("reader", ["path", "file object", "index"])
def test_a_gnu_long_name_names_only_the_member_after_it(tmp_path, reader):
    data = archive([("n" * 120 + ".jpg", b"1"), ("k.cls", b"2"), ("m" * 130 + ".json", b"3"), ("k.json", b"4")])
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = tar.getnames()
    source = path if reader == "path" else io.BytesIO(data)
    assert [m.name for m, _ in iter_members(source, read_data=reader != "index")] == expected
    assert expected[1] == "k.cls" and expected[3] == "k.json"


def _with_atime(data: bytes, header_at: int) -> bytes:
    """``data`` with the old GNU atime field (where ustar keeps its prefix) of the header at
    ``header_at`` set, and that header's checksum redone."""
    buf = bytearray(data)
    head = buf[header_at:header_at + BLOCK]
    head[345:357] = b"14000000000\0"
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    buf[header_at:header_at + BLOCK] = head
    return bytes(buf)


@pytest.mark.parametrize("reader", ["path", "file object"])
def test_a_gnu_long_name_is_the_whole_name_whatever_the_header_after_it_holds(tmp_path, reader):
    """tarfile takes the long name whole: bytes where ustar has a prefix (GNU's atime) are no folder."""
    plain = archive([("n" * 120 + ".jpg", b"1")])
    at = next(i for i in range(BLOCK, len(plain), BLOCK) if plain[i + 257:i + 265] == b"ustar  \0"
              and plain[i + 156:i + 157] == b"0")                    # the member's own header, after the name's
    data = _with_atime(plain, at)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["n" * 120 + ".jpg"]
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    source = path if reader == "path" else io.BytesIO(data)
    assert [m.name for m, _ in iter_members(source)] == ["n" * 120 + ".jpg"]


def test_a_member_cut_short_is_an_error_when_it_is_not_read():
    data = archive(MEMBERS)
    cut = data[:BLOCK + 50]                                     # the first header, half its data
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(iter_members(io.BytesIO(cut), read_data=False))
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(iter_members(io.BytesIO(cut), max_size=10))


@pytest.mark.parametrize("read_data", [True, False])
def test_gnu_long_names_are_read_by_the_scanner_without_tarfile(monkeypatch, read_data):
    """GNU long names are the writers' own form (names over 100 characters): they take the fast scanner."""
    import ferdata.tarscan as tarscan

    data = archive([("a.jpg", b"1"), ("n" * 120 + ".jpg", b"22"), ("k.cls", b"3")])

    def no_tarfile(*args, **kwargs):
        raise AssertionError("tarfile was used")
    monkeypatch.setattr(tarscan.tarfile, "open", no_tarfile)
    got = [(m.name, d) for m, d in iter_members(io.BytesIO(data), read_data=read_data)]
    assert [n for n, _ in got] == ["a.jpg", "n" * 120 + ".jpg", "k.cls"]
    if read_data:
        assert [d for _, d in got] == [b"1", b"22", b"3"]


def _flip_size_digit(data: bytes, header_at: int) -> bytes:
    """``data`` with one bit flipped in the size field of the header at ``header_at``: a "0" read as "8"."""
    out = bytearray(data)
    field = bytes(out[header_at + 124:header_at + 135])
    out[header_at + 124 + field.index(b"0")] ^= 0x08
    return bytes(out)


@pytest.mark.parametrize("whole", [True, False], ids=["whole file", "by blocks"])
def test_a_size_field_that_is_no_number_names_the_header(tmp_path, monkeypatch, whole):
    """One flipped bit in a size field gave int()'s "invalid literal ... base 8" (a ValueError naming
    neither the file nor where) on the whole-file path."""
    import ferdata.tarscan as tarscan

    if not whole:
        monkeypatch.setattr(tarscan, "WHOLE_FILE_BYTES", 0)
    path = tmp_path / "t.tar"
    path.write_bytes(_flip_size_digit(archive(MEMBERS), 2 * BLOCK))      # b.json's header
    with pytest.raises(tarfile.ReadError, match=r"corrupt tar header at byte 1024"):
        list(iter_members(path))


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_compressed_tar_is_read_whole_but_refused_for_reading_by_offset(tmp_path, compression):
    """Offsets into the decompressed stream were read from the compressed file (garbage labels, or an
    EOFError traceback for a cut one): an index of a compressed shard is refused; reading it whole works."""
    path = tmp_path / "t.tar"
    path.write_bytes(archive(MEMBERS, mode=f"w:{compression}"))
    assert [(m.name, d) for m, d in iter_members(path)] == MEMBERS
    for source in (path, io.BytesIO(path.read_bytes())):
        with pytest.raises(tarfile.ReadError, match="compressed archive.*decompress it to a plain .tar"):
            list(iter_members(source, read_data=False))


@pytest.mark.parametrize("read_data", [True, False])
@pytest.mark.parametrize("whole", [True, False], ids=["whole file", "by blocks"])
def test_a_long_name_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch, read_data, whole):
    """A GNU long name is read whole: a damaged or crafted size (300 MB of a sparse file) took twice
    that in memory and read no sample. Over MAX_META_BYTES (here made small) it is refused unread."""
    import ferdata.tarscan as tarscan

    monkeypatch.setattr(tarscan, "MAX_META_BYTES", 1000)
    if not whole:
        monkeypatch.setattr(tarscan, "WHOLE_FILE_BYTES", 0)
    path = tmp_path / "t.tar"
    path.write_bytes(archive([("n" * 999 + ".jpg", b"1"), ("k.cls", b"2")]))     # a 1004-byte name (NUL ended)
    with pytest.raises(tarfile.ReadError, match=r"corrupt tar header at byte 0: a GNU long name of 1004 bytes "
                                                r"\(limit 1000\)"):
        list(iter_members(path, read_data=read_data))
    monkeypatch.setattr(tarscan, "MAX_META_BYTES", 1004)
    assert [m.name for m, _ in iter_members(path, read_data=read_data)] == ["n" * 999 + ".jpg", "k.cls"]


@pytest.mark.parametrize("read_data", [True, False])
def test_a_gnu_long_name_with_no_member_after_it_is_a_cut_archive(tmp_path, read_data):
    """A tar cut after a long name's header and name, end blocks added (a copy cut at a member boundary
    and "repaired"): the member it names is lost; tarfile says "end of file header", the scanner read on."""
    data = archive([("a.cls", b"1"), ("n" * 150 + ".jpg", b"2")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        named = tar.getmembers()[1]
    path = tmp_path / "t.tar"
    path.write_bytes(data[:named.offset_data - BLOCK] + bytes(2 * BLOCK))      # up to the real header
    with pytest.raises(tarfile.ReadError, match=r"a GNU long name \('nnnn.*with no member after it"):
        list(iter_members(path, read_data=read_data))


def _base256_size(data: bytes, header_at: int) -> bytes:
    """``data`` with the size field of the header at ``header_at`` in base-256 form (as GNU tar writes
    sizes over 8 GiB), its checksum made again: a header the fast scanners hand to tarfile."""
    out = bytearray(data)
    size = int(bytes(out[header_at + 124:header_at + 135]), 8)
    out[header_at + 124:header_at + 136] = b"\x80" + size.to_bytes(11, "big")
    out[header_at + 148:header_at + 156] = b" " * 8
    out[header_at + 148:header_at + 156] = b"%06o\0 " % sum(out[header_at:header_at + BLOCK])
    return bytes(out)


@pytest.mark.parametrize("form", ["gzip", "base-256 size"])
def test_a_long_name_over_the_limit_is_refused_where_tarfile_reads_the_header(tmp_path, monkeypatch, form):
    """The limit held in the fast scanners only: a compressed archive or a base-256 size field went to
    tarfile, which read the name whole (a 32 KB gzip made a 32 MiB name)."""
    import ferdata.tarscan as tarscan

    monkeypatch.setattr(tarscan, "MAX_META_BYTES", 1000)
    members = [("n" * 999 + ".jpg", b"1"), ("k.cls", b"2")]
    path = tmp_path / "t.tar"
    path.write_bytes(archive(members, mode="w:gz") if form == "gzip" else _base256_size(archive(members), 0))
    with tarfile.open(path) as tar:                                   # tarfile itself reads it
        assert tar.getnames() == [n for n, _ in members]
    for read_data in (True, False) if form != "gzip" else (True,):
        with pytest.raises(tarfile.ReadError, match=r"a GNU long name of 1004 bytes \(limit 1000\)"):
            list(iter_members(path, read_data=read_data))
