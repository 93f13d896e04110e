"""The shard writer: byte-for-byte what ``tarfile`` writes (so any tar tool and webdataset read
it), deterministic, and read back safely by ``iter_tar_samples``."""
from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import PurePosixPath

import numpy as np
import pytest

from ferdata.tario import (BadTarError, TarShardWriter, UnsafeTarError, iter_dir_samples, iter_tar_samples,
                           member_header, split_member)
from ferdata import tarscan
from ferdata.tarscan import iter_members

NAMES = ["a.jpg", "x" * 98 + ".j", "x" * 99 + ".j", "dir/sub/key.lmk.npy", "k\u00e9y.json", "k" * 150 + ".json"]


def tarfile_archive(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """The reference: the same members written by the standard library's tarfile, GNU format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, fields in samples:
            for ext in sorted(fields):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(fields[ext]), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(fields[ext]))
    return buf.getvalue()


def random_samples(n: int, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = NAMES[i % len(NAMES)].split(".")[0] + f"_{i}"
        sizes = rng.choice([0, 1, 511, 512, 513, 5000], size=3)
        out.append((key, {ext: rng.bytes(int(s)) for ext, s in zip(("jpg", "json", "lmk.npy"), sizes)}))
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 512, 10 ** 6])
def test_member_header_matches_tarfile(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
    assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("n", [1, 7, 40])
def test_shard_bytes_equal_tarfile_output(tmp_path, n):
    samples = random_samples(n)
    with TarShardWriter(tmp_path, "s", maxcount=1000) as w:
        for key, fields in samples:
            w.write(key, fields)
    written = (tmp_path / "s-000000.tar").read_bytes()
    assert written == tarfile_archive(samples)
    assert len(written) % tarfile.RECORDSIZE == 0


def test_roll_over_and_read_back(tmp_path, monkeypatch):
    samples = random_samples(25, seed=3)
    with TarShardWriter(tmp_path, "s", maxcount=10) as w:
        for key, fields in samples:
            w.write(key, fields)
    assert [f.count for f in w.files] == [10, 10, 5]
    with monkeypatch.context() as m:                       # our own shards never need tarfile to read
        m.setattr("ferdata.tario.tarfile.open", lambda *a, **k: pytest.fail("fell back to tarfile"))
        assert list(iter_dir_samples(tmp_path, "s")) == samples
    with tarfile.open(w.files[0].path) as tar:                 # any tar reader sees the same members
        assert [m.name for m in tar][:3] == [f"{samples[0][0]}.{e}" for e in sorted(samples[0][1])]
    first = iter_tar_samples(io.BytesIO(w.files[2].path.read_bytes()))
    assert list(first) == samples[20:]


def test_no_file_is_written_under_a_name_no_reader_lists(tmp_path, monkeypatch):
    """The 1,000,000th file was named with 7 digits, which no reader lists: its samples were lost
    (align.chunk_size or shard.maxcount 1 over a million faces). Refused with what to change."""
    import ferdata.tario as tario

    assert tario.shard_name_pattern("s").fullmatch(f"s-{tario.MAX_FILES - 1:0{tario.NAME_DIGITS}d}.tar")
    assert not tario.shard_name_pattern("s").fullmatch(f"s-{tario.MAX_FILES:0{tario.NAME_DIGITS}d}.tar")
    monkeypatch.setattr(tario, "MAX_FILES", 3)
    samples = random_samples(4, seed=5)
    with pytest.raises(ValueError, match=r"more than 3 s files of 1 sample\(s\) each; .*shard.maxcount"):
        with TarShardWriter(tmp_path, "s", maxcount=1) as w:
            for key, fields in samples:
                w.write(key, fields)
    assert list(iter_dir_samples(tmp_path, "s")) == samples[:3]


def test_split_member_is_the_pathlib_rule_on_every_short_path():
    """The fast string split agrees with the pathlib definition on all paths over {a, b, ., /}."""
    def by_pathlib(name: str) -> tuple[str, str]:
        p = PurePosixPath(name)
        base, _, ext = p.name.partition(".")
        return (str(p.parent / base) if str(p.parent) != "." else base), ext.lower()

    names = ["".join(t) for n in range(1, 7) for t in itertools.product("ab./", repeat=n)]
    assert [split_member(n) for n in names if not n.startswith("/")] == \
        [by_pathlib(n) for n in names if not n.startswith("/")]
    assert split_member("dir/Key.LMK.npy") == ("dir/Key", "lmk.npy")


def archive(fmt: int, members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1234567
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def by_tarfile(data: bytes) -> list[tuple[str, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return [(m.name, m.offset_data, tar.extractfile(m).read()) for m in tar]


MEMBERS = [("a.jpg", b"x" * 700), ("deep/" * 30 + "k.json", b"{}"), ("k\u00e9y.cls", b"3"), ("b.jpg", b""),
           ("n" * 120 + ".lmk.npy", b"y" * 1024)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_iter_members_reads_what_tarfile_reads(tmp_path, fmt, mode):
    """GNU long names, ustar prefixes, pax headers (non-ASCII, long names), gzip: the fast
    scanner or its tarfile fallback give tarfile's names, offsets and bytes."""
    members = [(n, d) for n, d in MEMBERS if fmt != tarfile.USTAR_FORMAT or len(n) < 100]
    data = archive(fmt, members, mode)
    expected = by_tarfile(data)
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    got = [(m.name, m.offset_data, d) for m, d in iter_members(path)]
    assert [(n, d) for n, _, d in got] == [(n, d) for n, _, d in expected]
    if mode == "w":                                       # offsets only exist uncompressed
        assert got == expected
        index = [(m.name, m.offset_data, m.size) for m, _ in iter_members(io.BytesIO(data), read_data=False)]
        assert index == [(n, o, len(d)) for n, o, d in expected]


def test_iter_members_hands_unusual_members_to_tarfile_midway():
    """A symlink after plain members: the plain ones come from the scanner, the link from
    tarfile (and check_member then refuses it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in MEMBERS[:2]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("evil.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    got = list(iter_members(io.BytesIO(buf.getvalue())))
    assert [m.name for m, _ in got] == [MEMBERS[0][0], MEMBERS[1][0], "evil.jpg"] and not got[2][0].regular
    with pytest.raises(UnsafeTarError, match="not a regular file"):
        list(iter_tar_samples(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("as_path", [False, True])          # streamed scan / whole-file scan
def test_truncated_and_corrupt_archives_raise(tmp_path, as_path):
    def source(data: bytes):
        if not as_path:
            return io.BytesIO(data)
        (tmp_path / "t.tar").write_bytes(data)
        return tmp_path / "t.tar"

    data = archive(tarfile.GNU_FORMAT, MEMBERS[:2])
    with pytest.raises(tarfile.ReadError):
        list(iter_members(source(data[:600])))                  # ends inside the first member's data
    bad = bytearray(data)
    bad[10] ^= 0xFF                                            # header checksum no longer matches
    with pytest.raises(tarfile.ReadError):
        list(iter_members(source(bytes(bad))))
    later = bytearray(data)
    later[1536 + 10] ^= 0xFF                                   # the second header (after 512 + 1,024)
    with pytest.raises(tarfile.ReadError):
        list(iter_members(source(bytes(later))))


def test_a_shard_that_is_no_tar_is_a_user_error_naming_it(tmp_path):
    """Readers of shards and chunks (show, train, evaluate, align ...) say which file is damaged,
    as a ValueError (one error line on the command line), not tarfile's bare ReadError."""
    from ferdata.tarindex import index_tars

    data = archive(tarfile.GNU_FORMAT, MEMBERS[:2])
    (tmp_path / "cut.tar").write_bytes(data[:600])
    (tmp_path / "text.tar").write_bytes(b"just some text, not a tar archive\n" * 40)
    for name in ("cut.tar", "text.tar"):
        with pytest.raises(BadTarError, match=f"{name}: not a readable tar .*`ferdata verify`"):
            list(iter_tar_samples(tmp_path / name))
        with pytest.raises(ValueError, match=name):
            index_tars([tmp_path / name])


@pytest.mark.parametrize("as_path", [False, True])
def test_old_signed_header_checksums_are_accepted(tmp_path, as_path):
    """Some old tar writers summed the header as signed bytes; tarfile accepts that, so do we."""
    head = bytearray(member_header("k\u00e9y.jpg", 3))               # UTF-8 name: bytes >= 128
    head[148:156] = b"        "
    signed = sum(b - 256 if b >= 128 else b for b in head)
    assert signed != sum(head)
    head[148:155] = b"%06o\0" % signed
    data = bytes(head) + b"abc" + bytes(509) + bytes(1024)
    (tmp_path / "s.tar").write_bytes(data)
    got = list(iter_members(tmp_path / "s.tar" if as_path else io.BytesIO(data)))
    assert [(m.name, d) for m, d in got] == [("k\u00e9y.jpg", b"abc")]


def _writer_archive(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    for key, fields in samples:
        for ext in sorted(fields):
            buf.write(member_header(f"{key}.{ext}", len(fields[ext])) + fields[ext] + bytes(-len(fields[ext]) % 512))
    buf.write(bytes(1024))
    return buf.getvalue()


def test_block_scan_takes_writer_archives_and_matches_tarfile(tmp_path):
    """What the writer makes is read by the numpy-only block scan, with tarfile's members."""
    data = _writer_archive([(f"d/s{i}", {"jpg": bytes([i]) * (300 * i), "cls": b"%d" % i}) for i in range(6)])
    table = tarscan._scan_blocks(data)
    assert table is not None
    got = [(n, o, table.buf[o:o + s]) for n, s, o in zip(table.names, table.sizes, table.offsets)]
    assert got == by_tarfile(data)


@pytest.mark.parametrize("case", ["nested tar in data", "long name", "dir member", "trailing garbage"])
def test_block_scan_leaves_anything_unusual_to_the_exact_scanners(tmp_path, case):
    """A member whose data holds a header-like block (a tar in a tar), GNU long names, other
    member types, bytes after the end: the block scan declines, and the readers still give
    exactly tarfile's members (or its error), but for bytes after the end-of-archive marker,
    which tarfile ignores and the readers refuse (a zeroed header looks the same)."""
    inner = _writer_archive([("x", {"jpg": b"inner"})])
    members = {"nested tar in data": [("a", {"tar": inner, "cls": b"1"})],
               "long name": [("n" * 120, {"jpg": b"z" * 10})],
               "dir member": [], "trailing garbage": [("a", {"cls": b"1"})]}[case]
    data = _writer_archive(members)
    if case == "dir member":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(tarfile.TarInfo("a.cls"), io.BytesIO(b""))
            d = tarfile.TarInfo("sub")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
        data = buf.getvalue()
    if case == "trailing garbage":
        data += b"\x01" + bytes(511)
    assert tarscan._scan_blocks(data) is None
    (tmp_path / "t.tar").write_bytes(data)
    if case == "trailing garbage":
        for source in (tmp_path / "t.tar", io.BytesIO(data)):
            with pytest.raises(tarfile.ReadError, match="after the end-of-archive marker at byte 1024"):
                list(iter_members(source))
        return
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, m.offset_data, m.isreg()) for m in tar]
    assert [(m.name, m.offset_data, m.regular) for m, _ in iter_members(tmp_path / "t.tar")] == expected


@pytest.mark.parametrize("as_path", [False, True])
def test_negative_member_size_is_a_corrupt_header(tmp_path, as_path):
    head = bytearray(member_header("a.jpg", 0))
    head[124:136] = b"-0000001000\0"
    head[148:156] = b"        "
    head[148:155] = b"%06o\0" % sum(head)
    data = bytes(head) + bytes(1024)
    (tmp_path / "t.tar").write_bytes(data)
    with pytest.raises(tarfile.ReadError, match="negative size"):
        list(iter_members(tmp_path / "t.tar" if as_path else io.BytesIO(data)))


def test_sample_reader_gives_the_same_samples_from_a_path_and_a_stream(tmp_path):
    """Whole-file (screened names, block scan) and streamed (member by member) reading agree,
    also on names split_member normalises and on extensions with capitals."""
    samples = [("d/a", {"jpg": b"1", "left.jpg": b"22"}), ("d/b", {"JPG": b"3", "cls": b"4"}), ("c", {"cls": b"5"})]
    data = _writer_archive(samples) + bytes(512)
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    from_path = list(iter_tar_samples(path))
    assert from_path == list(iter_tar_samples(io.BytesIO(data)))
    assert [k for k, _ in from_path] == ["d/a", "d/b", "c"] and from_path[1][1] == {"jpg": b"3", "cls": b"4"}
    odd = _writer_archive([("d//a", {"jpg": b"1"}), ("./d/b", {"jpg": b"2"})])
    path.write_bytes(odd)
    assert [k for k, _ in iter_tar_samples(path)] == ["d/a", "d/b"] == [k for k, _ in iter_tar_samples(io.BytesIO(odd))]


def test_only_some_members_are_handed_out_but_every_sample_is(tmp_path):
    """``only``: each sample's dict holds just those extensions, a sample with none of them is
    still yielded (empty), whole-file and streamed reading agree; without it nothing is left out."""
    samples = [("a", {"jpg": b"1", "cls": b"0", "left.jpg": b"22", "lmk.npy": b"x"}), ("b", {"json": b"{}"}),
               ("c", {"jpg": b"3", "cls": b"4"})]
    data = _writer_archive(samples) + bytes(512)
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    want = [(k, {e: v for e, v in f.items() if e in {"jpg", "cls"}}) for k, f in samples]
    assert list(iter_tar_samples(path, only={"jpg", "cls"})) == want
    assert list(iter_tar_samples(io.BytesIO(data), only={"jpg", "cls"})) == want
    assert list(iter_tar_samples(path)) == samples


def test_a_tar_cut_short_after_indexing_is_an_error_not_a_shorter_member(tmp_path):
    """The shard stage and training's indexed reader read members by (path, offset, size): a tar
    truncated since it was indexed gave a few bytes fewer, silently (a JSON or JPEG cut mid-way)."""
    from ferdata.tarindex import index_tars, read_indexed
    from fermodels.indexed import read_member

    with TarShardWriter(tmp_path, "s", maxcount=10) as w:
        w.write("a", {"cls": b"3", "json": b'{"key": "a"}'})
        w.write("b", {"cls": b"1", "json": b'{"key": "b"}'})
    path = w.files[0].path
    member = index_tars([path])["b"]["json"]
    assert read_indexed(member) == read_member(member) == b'{"key": "b"}'
    with open(path, "r+b") as f:
        f.truncate(member[1] + member[2] - 1)
    for read in (read_indexed, read_member):
        with pytest.raises(BadTarError, match=f"{path.name}: not a readable tar .*needs {member[2]} bytes, "
                                              f"{member[2] - 1} are left"):
            read(member)


def test_member_reader_keeps_at_most_max_open_tars_open_and_reads_each_member_right(tmp_path):
    import os

    from ferdata.tarindex import MemberReader, index_tars

    paths = []
    for t in range(3):
        with TarShardWriter(tmp_path, f"t{t}", maxcount=10) as w:
            for k in "ab":
                w.write(f"{t}{k}", {"cls": f"{t}{k}".encode(), "json": b"{}"})
        paths.append(w.files[0].path)
    index = index_tars(paths)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    with MemberReader(max_open=2) as read:
        for key in ["0a", "1a", "2a", "0b", "2b", "1b", "0a"] * 2:     # round robin over 3 tars, 2 slots
            assert read(index[key]["cls"]) == key.encode()
            assert open_fds() - before <= 2
    assert open_fds() == before                                       # closed on exit


def _damaged(tmp_path, how: str) -> tuple[bytes, int]:
    """A writer's shard of 4 three-member samples, damaged ``how``; and how many of its members
    tarfile still reads without complaint (the damage it would not see)."""
    with TarShardWriter(tmp_path, "s", maxcount=10) as w:
        for i in range(4):
            w.write(f"k{i}", {"jpg": bytes([i + 1]) * 700, "cls": b"%d" % i, "json": b"{}"})
    data = (tmp_path / "s-000000.tar").read_bytes()
    table = tarscan._scan_blocks(data)
    heads = [o - 512 for o in table.offsets]
    if how == "cut between samples":
        data = data[:heads[6]]
    elif how == "cut inside a sample":
        data = data[:heads[10]]
    elif how == "header zeroed":
        data = data[:heads[6]] + bytes(512) + data[heads[6] + 512:]
    elif how == "header overwritten":
        data = data[:heads[6]] + b"\x01" * 512 + data[heads[6] + 512:]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data, len(tar.getmembers())


@pytest.mark.parametrize("how", ["cut between samples", "cut inside a sample", "header zeroed", "header overwritten"])
@pytest.mark.parametrize("reader", ["whole file", "block by block", "file object"])
def test_a_shard_that_lost_its_tail_is_an_error_not_fewer_samples(tmp_path, monkeypatch, how, reader):
    """tarfile reads a shard cut short, or one whose header was zeroed or overwritten, as a shorter
    valid archive: the loaders would train on fewer samples, or on a last sample missing its image.
    The readers refuse each: an archive must end with its end-of-archive marker, only zeros follow."""
    data, tarfile_sees = _damaged(tmp_path, how)
    assert tarfile_sees < 12                               # tarfile reads on, without an error
    path = tmp_path / "d.tar"
    path.write_bytes(data)
    if reader == "block by block":
        monkeypatch.setattr(tarscan, "WHOLE_FILE_BYTES", 0)
    want = {"header zeroed": "after the end-of-archive marker", "header overwritten": "a damaged header at byte"}.get(
        how, "without the end-of-archive marker")
    with pytest.raises(tarfile.ReadError, match=want):
        list(iter_members(io.BytesIO(data) if reader == "file object" else path))
    if reader != "file object":
        with pytest.raises(BadTarError, match=f"d.tar: not a readable tar .*{want}"):
            list(iter_tar_samples(path))


def test_an_undamaged_shard_reads_whole_by_every_reader(tmp_path, monkeypatch):
    data, n = _damaged(tmp_path, "none")
    assert n == 12
    assert len(list(iter_members(io.BytesIO(data)))) == 12
    monkeypatch.setattr(tarscan, "WHOLE_FILE_BYTES", 0)
    assert len(list(iter_tar_samples(tmp_path / "s-000000.tar"))) == 4


def test_a_sample_with_a_member_written_twice_is_refused_from_a_path_and_a_stream(tmp_path):
    """Guards against dropping the duplicate-member refusal: ``k1.cls`` twice in one sample must be
    an UnsafeTarError naming it, not the second copy silently replacing the first (a relabelled sample)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for payload in (b"first", b"second"):
            info = tarfile.TarInfo("k1.cls")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    path = tmp_path / "dup.tar"
    path.write_bytes(data)
    for source in (path, io.BytesIO(data)):
        with pytest.raises(UnsafeTarError, match=r"duplicate member 'k1\.cls'"):
            list(iter_tar_samples(source))


def _plain_tar(path, names: list[str], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar of ``names`` (4 bytes each, ``fmt``) written by ``tarfile``; its bytes."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    return path.read_bytes()


def _with_checksum(header: bytearray) -> None:
    """Store the header's checksum as tar writes it: 6 octal digits, NUL, space (field as spaces)."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])


def test_a_checksum_field_that_is_no_number_is_a_corrupt_header(tmp_path):
    """Bug guarded: a checksum field that does not parse (overwritten with text) taken as matching,
    so a damaged header was read as a member instead of refused as corrupt."""
    path = tmp_path / "a.tar"
    data = bytearray(_plain_tar(path, ["k.jpg", "k.cls"]))
    data[148:156] = b"garbage!"
    path.write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match="corrupt tar header at byte 0: checksum"):
        list(iter_members(path))


def test_a_name_field_with_a_nul_inside_ends_at_the_nul_as_tarfile_reads_it(tmp_path):
    """Bug guarded: a name field holding bytes after its NUL (``k.jpg\\0xyz``, left by an editor or a
    writer that reuses buffers) kept them, so the member was not the one tarfile names ``k.jpg``."""
    path = tmp_path / "a.tar"
    data = bytearray(_plain_tar(path, ["k.jpg", "k.cls"]))
    data[6:9] = b"xyz"                                    # after "k.jpg\0"
    header = data[:512]
    _with_checksum(header)
    data[:512] = header
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:
        expected = tar.getnames()
    assert expected == ["k.jpg", "k.cls"]
    assert [m.name for m, _ in iter_members(path)] == expected


def test_a_ustar_prefix_is_part_of_the_name(tmp_path):
    """Bug guarded: the ustar ``prefix`` field (names over 100 characters) ignored, so a member
    ``<long folder>/k.jpg`` was read as ``k.jpg``, as tarfile never names it."""
    long_dir = "d" * 120
    path = tmp_path / "a.tar"
    _plain_tar(path, [f"{long_dir}/k.jpg"], fmt=tarfile.USTAR_FORMAT)
    assert path.read_bytes()[345:345 + 120] == long_dir.encode()         # the writer did use the prefix
    assert [m.name for m, _ in iter_members(path)] == [f"{long_dir}/k.jpg"]


@pytest.mark.parametrize("key", ["", "a.b", "/a", "a//b", "a/", "a\\b", "a\0b", "a\nb", "a/../b"])
def test_the_writer_refuses_keys_its_readers_would_rename_or_refuse(tmp_path, key):
    """'a//b' was written and read back as 'a/b'; 'a\\b' written and then refused as unsafe on read."""
    with TarShardWriter(tmp_path, "x", 10) as writer:
        with pytest.raises(ValueError, match="invalid sample key"):
            writer.write(key, {"cls": b"0"})
        writer.write("dir/ok_key-1", {"cls": b"0"})
    assert [k for k, _ in iter_tar_samples(writer.files[0].path)] == ["dir/ok_key-1"]


def test_a_member_over_the_limit_is_refused_before_it_is_read(tmp_path):
    """The size check came after the member was read whole: a 400 kB .tar.gz holding a 400 MB member
    grew memory by 800 MB before it was refused."""
    import gzip
    import tracemalloc

    from ferdata.tario import MAX_MEMBER_BYTES

    size = MAX_MEMBER_BYTES + (1 << 20)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("k0.jpg")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    (tmp_path / "big.tar.gz").write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    del raw
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeTarError, match=f"member 'k0.jpg' is {size} bytes"):
            list(iter_tar_samples(tmp_path / "big.tar.gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_MEMBER_BYTES // 4, peak


def test_a_gnu_long_name_is_the_whole_name_whatever_the_prefix_field_holds(tmp_path):
    """tarfile takes a GNU long name whole; the fast scanner put the real header's prefix field before
    it ('evil/kkk...jpg' where tarfile reads 'kkk...jpg')."""
    name = "k" * 120 + ".jpg"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(raw.getvalue())
    at = 1024                                           # the LongLink header, its name block, then the real header
    assert data[at + 156:at + 157] == b"0"
    data[at + 345:at + 349] = b"evil"
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 155] = f"{sum(data[at:at + 512]):06o}\0".encode()
    (tmp_path / "long.tar").write_bytes(bytes(data))
    with tarfile.open(tmp_path / "long.tar") as tar:
        assert tar.getnames() == [name]
    for read_data in (True, False):
        assert [m.name for m, _ in iter_members(tmp_path / "long.tar", read_data=read_data)] == [name]
    with open(tmp_path / "long.tar", "rb") as f:
        assert [m.name for m, _ in iter_members(f)] == [name]


def test_member_reader_closes_the_least_recently_used_tar(tmp_path):
    from ferdata.tarindex import MemberReader, index_tars

    paths = []
    for t in range(3):
        with TarShardWriter(tmp_path, f"t{t}", maxcount=10) as w:
            w.write(f"{t}a", {"cls": f"{t}a".encode()})
        paths.append(w.files[0].path)
    index = index_tars(paths)
    with MemberReader(max_open=2) as read:
        for key in ["0a", "1a", "0a", "2a"]:                      # 0 used after 1: 1 is the one closed
            assert read(index[key]["cls"]) == key.encode()
        assert set(read._fds) == {str(paths[0]), str(paths[2])}


def test_read_indexed_without_a_descriptor_closes_the_one_it_opens(tmp_path):
    import os

    from ferdata.tarindex import index_tars, read_indexed

    with TarShardWriter(tmp_path, "s", maxcount=10) as w:
        w.write("k", {"cls": b"7"})
    index = index_tars([w.files[0].path])
    before = len(os.listdir("/proc/self/fd"))
    assert [read_indexed(index["k"]["cls"]) for _ in range(5)] == [b"7"] * 5
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_member_in_two_tars_is_refused_by_the_index(tmp_path):
    from ferdata.tarindex import index_tars
    from ferdata.tario import UnsafeTarError

    paths = []
    for t in range(2):
        with TarShardWriter(tmp_path, f"t{t}", maxcount=10) as w:
            w.write("same", {"cls": b"%d" % t})
        paths.append(w.files[0].path)
    with pytest.raises(UnsafeTarError, match=r"duplicate member 'same.cls' \(key 'same' written twice\)"):
        index_tars(paths)
