"""ZipPlan: byte-exact streamed ZIP archives, checked by independent readers.

Archives are materialised from the plan's segments (header bytes plus slices of member
data held in memory or, for the 4 GiB case, in a sparse file), then read by Python's
zipfile, Info-ZIP unzip/zipinfo, bsdtar (from a pipe, so it sees only local headers) and
7-Zip, and by a small structural parser below that checks the raw headers field by field.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import stat
import struct
import subprocess
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filecask.archives.zipplan import DataSlice, HeaderBytes, Member, ZipPlan

GiB = 1 << 30
U32 = 0xFFFFFFFF
ZIP64_EXTRA = 0x0001
TIME_EXTRA = 0x5455
SIG_LOCAL = 0x04034B50
SIG_CENTRAL = 0x02014B50
SIG_ZIP64_END = 0x06064B50
SIG_ZIP64_LOCATOR = 0x07064B50
SIG_END = 0x06054B50
UTF8_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}

T0 = 1_700_000_000.75  # 2023-11-14 22:13:20.75 UTC


def member(name: str, data: bytes = b"", mtime: float = T0, mode: int = 0o100644) -> Member:
    if name.endswith("/"):
        return Member.directory(name, mtime)
    return Member(name, len(data), zlib.crc32(data), mtime, mode)


def render(
    plan: ZipPlan, data_by_name: Mapping[str, bytes], start: int = 0, end: int | None = None
) -> bytes:
    """archive[start:end], from the plan's segments and member data held in memory."""
    out = bytearray()
    for segment in plan.segments(start, end):
        if isinstance(segment, HeaderBytes):
            out += segment.data
        else:
            data = data_by_name[segment.member.name]
            out += data[segment.offset : segment.offset + segment.length]
    return bytes(out)


def write_archive(plan: ZipPlan, path: Path, *, data_only_from_source: bool = True) -> None:
    """Write the archive piece by piece; member data is read from ``member.source`` (a Path).

    With ``data_only_from_source=False`` the data is left as holes (zeros), which is enough
    for anything that only reads headers. All-zero data chunks are written as holes either
    way, so a sparse source gives a sparse archive with identical content.
    """
    chunk = 16 << 20
    zeros = bytes(chunk)
    with path.open("wb") as out:
        for segment in plan.segments():
            if isinstance(segment, HeaderBytes):
                out.write(segment.data)
                continue
            if not data_only_from_source:
                out.seek(segment.length, os.SEEK_CUR)
                continue
            source = segment.member.source
            assert isinstance(source, Path)
            with source.open("rb") as f:
                f.seek(segment.offset)
                left = segment.length
                while left:
                    block = f.read(min(chunk, left))
                    assert block
                    if block == zeros[: len(block)]:
                        out.seek(len(block), os.SEEK_CUR)
                    else:
                        out.write(block)
                    left -= len(block)
        out.truncate(plan.size)
    assert path.stat().st_size == plan.size


# --- A structural parser: every header, field by field ------------------------------------


@dataclass
class Header:
    offset: int
    name: str
    version_needed: int
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc32: int
    compressed: int
    uncompressed: int
    extras: dict[int, bytes]
    version_made_by: int = 0
    external_attr: int = 0
    local_offset: int = 0

    def real_size(self) -> int:
        if self.uncompressed != U32:
            return self.uncompressed
        return int(struct.unpack_from("<Q", self.extras[ZIP64_EXTRA])[0])


@dataclass
class Layout:
    locals: list[Header] = field(default_factory=list)
    centrals: list[Header] = field(default_factory=list)
    zip64_end: tuple[int, ...] | None = None
    end: tuple[int, ...] = ()

    def extra_ids(self) -> set[int]:
        return {i for h in [*self.locals, *self.centrals] for i in h.extras}


def parse_extras(raw: bytes) -> dict[int, bytes]:
    extras: dict[int, bytes] = {}
    pos = 0
    while pos < len(raw):
        ident, length = struct.unpack_from("<HH", raw, pos)
        assert ident not in extras
        extras[ident] = raw[pos + 4 : pos + 4 + length]
        assert len(extras[ident]) == length
        pos += 4 + length
    assert pos == len(raw)
    return extras


def parse(f: BinaryIO) -> Layout:
    """Walk the local headers from offset 0 as a streaming reader would, read the central
    directory through the end records, and check that both agree."""
    layout = Layout()
    size = f.seek(0, os.SEEK_END)
    f.seek(size - 22)
    layout.end = struct.unpack("<IHHHHIIH", f.read(22))
    assert layout.end[0] == SIG_END
    count, cd_size, cd_offset = layout.end[4], layout.end[5], layout.end[6]
    end_of_cd = size - 22
    if size >= 22 + 20 + 56:
        f.seek(size - 22 - 20)
        locator = struct.unpack("<IIQI", f.read(20))
        if locator[0] == SIG_ZIP64_LOCATOR:
            assert locator[2] == size - 22 - 20 - 56
            f.seek(locator[2])
            layout.zip64_end = struct.unpack("<IQHHIIQQQQ", f.read(56))
            assert layout.zip64_end[0] == SIG_ZIP64_END
            assert layout.zip64_end[1] == 44
            count, cd_size, cd_offset = layout.zip64_end[7:10]
            end_of_cd = locator[2]
    assert cd_offset + cd_size == end_of_cd

    f.seek(cd_offset)
    cd = f.read(cd_size)
    pos = 0
    while pos < len(cd):
        (sig, made_by, needed, flags, method, dos_time, dos_date, crc, csize, usize,
         name_len, extra_len, comment_len, _disk, _internal, external, local_offset,
        ) = struct.unpack_from("<IHHHHHHIIIHHHHHII", cd, pos)  # fmt: skip
        assert sig == SIG_CENTRAL
        name = cd[pos + 46 : pos + 46 + name_len].decode()
        extras = parse_extras(cd[pos + 46 + name_len : pos + 46 + name_len + extra_len])
        if local_offset == U32:
            local_offset = struct.unpack_from("<Q", extras[ZIP64_EXTRA], -8)[0]
        layout.centrals.append(
            Header(pos + cd_offset, name, needed, flags, method, dos_time, dos_date, crc,
                   csize, usize, extras, made_by, external, local_offset)
        )  # fmt: skip
        pos += 46 + name_len + extra_len + comment_len
    assert len(layout.centrals) == count

    pos = 0
    while pos < cd_offset:
        f.seek(pos)
        (sig, needed, flags, method, dos_time, dos_date, crc, csize, usize, name_len,
         extra_len) = struct.unpack("<IHHHHHIIIHH", f.read(30))  # fmt: skip
        assert sig == SIG_LOCAL
        name = f.read(name_len).decode()
        extras = parse_extras(f.read(extra_len))
        header = Header(pos, name, needed, flags, method, dos_time, dos_date, crc, csize,
                        usize, extras)  # fmt: skip
        layout.locals.append(header)
        pos += 30 + name_len + extra_len + header.real_size()
    assert pos == cd_offset

    assert [h.offset for h in layout.locals] == [h.local_offset for h in layout.centrals]
    for local, central in zip(layout.locals, layout.centrals, strict=True):
        assert local.name == central.name
        assert local.version_needed == central.version_needed
        assert local.flags == central.flags
        assert (local.method, local.dos_time, local.dos_date, local.crc32) == (
            central.method,
            central.dos_time,
            central.dos_date,
            central.crc32,
        )
        assert local.real_size() == central.real_size()
        assert local.extras[TIME_EXTRA] == central.extras[TIME_EXTRA]
    return layout


def parse_bytes(archive: bytes) -> Layout:
    return parse(io.BytesIO(archive))


def parse_plan_headers(plan: ZipPlan, path: Path) -> Layout:
    """Parse a plan without any member data (data regions are holes)."""
    write_archive(plan, path, data_only_from_source=False)
    with path.open("rb") as f:
        return parse(f)


def expected_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    seconds = min(max(int(mtime // 1), 315532800), 4354819198)
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second // 2 * 2)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install unzip libarchive-tools p7zip-full)")
    return path


def run(args: list[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        args, input=stdin, capture_output=True, env=UTF8_ENV, cwd=cwd, check=False, timeout=300
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    return output


# --- A sample archive ---------------------------------------------------------------------

SAMPLE: dict[str, bytes] = {
    "фото/": b"",
    "фото/снимок 1.jpg": bytes(range(256)) * 40,
    "日本語.txt": "こんにちは、世界\n".encode(),
    "bin/": b"",
    "bin/run.sh": b"#!/bin/sh\necho hi\n",
    "empty": b"",
    "private.txt": b"secret\n",
    "old.txt": b"from the eighties\n",
}
SAMPLE_MODES = {"bin/run.sh": 0o100755, "private.txt": 0o100600}
SAMPLE_MTIMES = {"old.txt": 500_000_000.0}  # 1985-11-05


def sample_members() -> list[Member]:
    return [
        member(name, data, SAMPLE_MTIMES.get(name, T0 + 3601 * i), SAMPLE_MODES.get(name, 0o100644))
        for i, (name, data) in enumerate(SAMPLE.items())
    ]


@pytest.fixture(scope="module")
def sample() -> tuple[ZipPlan, bytes]:
    plan = ZipPlan(sample_members())
    return plan, render(plan, SAMPLE)


@pytest.fixture
def sample_file(sample: tuple[ZipPlan, bytes], tmp_path: Path) -> Path:
    path = tmp_path / "sample.zip"
    path.write_bytes(sample[1])
    return path


def assert_tree(root: Path, members: Iterable[Member], *, check_mode: bool = True) -> None:
    """The extracted tree has exactly the members, with their bytes, mtimes and modes."""
    members = list(members)
    found = {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}
    assert found == {m.name for m in members}
    for m in members:
        path = root / m.name
        st_ = path.stat()
        if not m.is_dir:
            assert path.read_bytes() == SAMPLE[m.name]
        assert st_.st_mtime == int(m.mtime // 1), m.name
        if check_mode:
            assert st_.st_mode == m.mode, (m.name, oct(st_.st_mode))


# --- Python zipfile and the raw structure -------------------------------------------------


def test_zipfile_reads_every_member(sample: tuple[ZipPlan, bytes]) -> None:
    plan, archive = sample
    assert len(archive) == plan.size
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == list(SAMPLE)
        for info, m in zip(infos, plan.members, strict=True):
            assert info.file_size == info.compress_size == len(SAMPLE[m.name])
            assert zlib.crc32(SAMPLE[m.name]) == info.CRC
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits == 0x800  # UTF-8, and no data descriptor (bit 3)
            assert info.create_system == 3
            assert info.create_version == 63
            assert info.extract_version == 20
            assert info.date_time == expected_date_time(m.mtime)
            assert info.external_attr >> 16 == m.mode
            assert info.external_attr & 0x10 == (0x10 if m.is_dir else 0)
            assert info.is_dir() == m.is_dir
            assert zf.read(info) == SAMPLE[m.name]


def test_raw_headers_small_archive_has_no_zip64(sample: tuple[ZipPlan, bytes]) -> None:
    plan, archive = sample
    layout = parse_bytes(archive)
    assert layout.extra_ids() == {TIME_EXTRA}
    assert layout.zip64_end is None
    assert struct.pack("<I", SIG_ZIP64_END) not in archive
    assert struct.pack("<I", SIG_ZIP64_LOCATOR) not in archive
    assert layout.end == (SIG_END, 0, 0, 8, 8, layout.end[5], layout.end[6], 0)
    for header, m in zip(layout.locals, plan.members, strict=True):
        assert header.flags & 0x08 == 0
        assert (header.compressed, header.uncompressed) == (m.size, m.size)
        # Extended timestamp: flags=1 (mtime), the whole-second Unix mtime.
        assert header.extras[TIME_EXTRA] == struct.pack("<BI", 1, int(m.mtime // 1))
    for header in layout.centrals:
        assert header.version_made_by == 0x033F


def test_same_members_same_bytes(sample: tuple[ZipPlan, bytes]) -> None:
    again = ZipPlan([replace(m, source=object()) for m in sample_members()])
    assert render(again, SAMPLE) == sample[1]
    assert again.etag_material == sample[0].etag_material


def test_bytes_do_not_depend_on_the_time_zone(
    sample: tuple[ZipPlan, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert render(ZipPlan(sample_members()), SAMPLE) == sample[1]
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other.txt"},
        {"size": 3},
        {"crc32": 1},
        {"mtime": T0 + 1},
        {"mode": 0o100600},
    ],
)
def test_etag_material_changes_with_any_member_field(change: dict[str, object]) -> None:
    base = Member("a.txt", 2, 7, T0)
    assert ZipPlan([base]).etag_material != ZipPlan([replace(base, **change)]).etag_material  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mtime", "date_time", "unix"),
    [
        (-5.0, (1980, 1, 1, 0, 0, 0), 0),
        (100.0, (1980, 1, 1, 0, 0, 0), 100),
        (315532801.9, (1980, 1, 1, 0, 0, 0), 315532801),
        (T0, (2023, 11, 14, 22, 13, 20), 1_700_000_000),
        (2**32 - 1, (2106, 2, 7, 6, 28, 14), 2**32 - 1),
        (2**32 + 10, (2106, 2, 7, 6, 28, 26), U32),
        (1e11, (2107, 12, 31, 23, 59, 58), U32),
    ],
)
def test_timestamps_are_utc_and_clamped(
    mtime: float, date_time: tuple[int, ...], unix: int
) -> None:
    plan = ZipPlan([Member("a", 0, 0, mtime)])
    archive = render(plan, {"a": b""})
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.infolist()[0].date_time == date_time
    layout = parse_bytes(archive)
    assert layout.locals[0].extras[TIME_EXTRA] == struct.pack("<BI", 1, unix)


# --- Independent tools --------------------------------------------------------------------


def test_unzip_tests_lists_and_extracts(sample: tuple[ZipPlan, bytes], sample_file: Path) -> None:
    unzip = tool("unzip")
    assert "No errors detected" in run([unzip, "-t", str(sample_file)])
    listing = run([unzip, "-Z", "-l", str(sample_file)])
    assert "-rwxr-xr-x  6.3 unx       18 bx       18 stor" in listing
    assert "drwxr-xr-x  6.3 unx        0 bx        0 stor" in listing
    assert "-rw-------  6.3 unx        7 bx        7 stor" in listing
    assert "фото/снимок 1.jpg" in listing
    assert "日本語.txt" in listing
    out = sample_file.parent / "unzip-out"
    run([unzip, "-q", str(sample_file), "-d", str(out)])
    assert_tree(out, sample[0].members)


def bsdtar_listing(output: str) -> dict[str, tuple[str, int]]:
    listed = {}
    for line in output.splitlines():
        mode, _links, _uid, _gid, size, _month, _day, _year, name = line.split(maxsplit=8)
        listed[name] = (mode, int(size))
    return listed


def test_bsdtar_streams_from_a_pipe(sample: tuple[ZipPlan, bytes], tmp_path: Path) -> None:
    """A streaming reader sees only local headers: proves that the sizes, CRCs, names and
    mtimes are all there (no data descriptors). Local headers have no external attributes,
    so a streaming reader cannot know the modes; it uses its defaults."""
    bsdtar = tool("bsdtar")
    plan, archive = sample
    listed = bsdtar_listing(run([bsdtar, "-tvf", "-"], stdin=archive))
    assert {name: size for name, (_, size) in listed.items()} == {
        m.name: m.size for m in plan.members
    }
    out = tmp_path / "bsdtar-out"
    out.mkdir()
    run([bsdtar, "-xf", "-"], stdin=archive, cwd=out)
    assert_tree(out, plan.members, check_mode=False)
    # Negative control: bsdtar does check each member's CRC-32 while streaming.
    corrupt = bytearray(archive)
    corrupt[archive.index(SAMPLE["bin/run.sh"])] ^= 1
    result = subprocess.run(
        [bsdtar, "-xf", "-"], input=bytes(corrupt), cwd=out, capture_output=True, check=False
    )
    assert result.returncode != 0
    assert b"CRC" in result.stderr or b"crc" in result.stderr.lower()


def test_bsdtar_reads_modes_from_the_central_directory(
    sample: tuple[ZipPlan, bytes], sample_file: Path
) -> None:
    bsdtar = tool("bsdtar")
    listed = bsdtar_listing(run([bsdtar, "-tvf", str(sample_file)]))
    assert listed == {m.name: (stat.filemode(m.mode), m.size) for m in sample[0].members}


def test_7z_tests_and_extracts(sample: tuple[ZipPlan, bytes], sample_file: Path) -> None:
    seven = tool("7z")
    assert "Everything is Ok" in run([seven, "t", str(sample_file)])
    out = sample_file.parent / "7z-out"
    run([seven, "x", "-y", f"-o{out}", str(sample_file)])
    assert_tree(out, sample[0].members, check_mode=False)


# --- Segments: any range, exactly ---------------------------------------------------------

DIR_ALPHABET = "abzXY09 -_фйж日本"
LEAF_ALPHABET = DIR_ALPHABET + ".é語"
dir_part = st.text(DIR_ALPHABET, min_size=1, max_size=5)
file_leaf = st.text(LEAF_ALPHABET, max_size=8).map(lambda s: s + ".f")


@st.composite
def member_sets(draw: st.DrawFn) -> tuple[list[Member], dict[str, bytes]]:
    """Members with distinct, valid, non-clashing names: directory components never contain
    '.', file names always end with '.f', so no file can also be a directory."""
    specs = draw(
        st.lists(
            st.tuples(
                st.lists(dir_part, max_size=2),
                st.one_of(st.none(), file_leaf),  # None: a directory entry
            ).filter(lambda spec: spec[0] or spec[1] is not None),
            max_size=8,
            unique_by=lambda spec: (*spec[0], spec[1]),
        )
    )
    members: list[Member] = []
    data: dict[str, bytes] = {}
    for dirs, leaf in specs:
        mtime = draw(st.floats(min_value=-1e9, max_value=5e9, allow_nan=False))
        if leaf is None:
            members.append(Member.directory("/".join(dirs), mtime))
            data[members[-1].name] = b""
        else:
            name = "/".join([*dirs, leaf])
            content = draw(st.binary(max_size=5000))
            mode = draw(st.sampled_from([0o100644, 0o100755, 0o100600, 0o100400]))
            members.append(member(name, content, mtime, mode))
            data[name] = content
    return members, data


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(member_sets(), st.data())
def test_any_range_is_the_slice_of_the_whole(
    spec: tuple[list[Member], dict[str, bytes]], data: st.DataObject
) -> None:
    members, contents = spec
    plan = ZipPlan(members)
    whole = render(plan, contents)
    assert len(whole) == plan.size
    start = data.draw(st.integers(0, plan.size), label="start")
    end = data.draw(st.integers(start, plan.size), label="end")
    pieces = list(plan.segments(start, end))
    total = 0
    for piece in pieces:
        if isinstance(piece, HeaderBytes):
            assert piece.data
            total += len(piece.data)
        else:
            assert isinstance(piece, DataSlice)
            assert piece.length > 0
            assert 0 <= piece.offset < piece.offset + piece.length <= piece.member.size
            total += piece.length
    assert total == end - start
    assert render(plan, contents, start, end) == whole[start:end]
    # Adjacent ranges tile the archive: no gaps, no overlap.
    assert render(plan, contents, 0, start) + whole[start:end] + render(plan, contents, end) == (
        whole
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(member_sets())
def test_zipfile_round_trips_the_members(spec: tuple[list[Member], dict[str, bytes]]) -> None:
    members, contents = spec
    plan = ZipPlan(members)
    archive = render(plan, contents)
    parse_bytes(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [m.name for m in members]
        for info, m in zip(infos, members, strict=True):
            assert zf.read(info) == contents[m.name]
            assert m.crc32 == info.CRC
            assert info.external_attr >> 16 == m.mode
            assert info.date_time == expected_date_time(m.mtime)


def test_segments_validate_the_range(sample: tuple[ZipPlan, bytes]) -> None:
    plan = sample[0]
    for start, end in [(-1, 5), (5, 4), (0, plan.size + 1), (plan.size + 1, None)]:
        with pytest.raises(ValueError, match="outside archive"):
            list(plan.segments(start, end))
    assert list(plan.segments(plan.size)) == []
    assert list(plan.segments(7, 7)) == []


def test_segments_join_adjacent_headers() -> None:
    plan = ZipPlan([Member(f"d{i}/", 0, 0, T0, 0o40755) for i in range(5000)])
    pieces = list(plan.segments())
    assert all(isinstance(p, HeaderBytes) for p in pieces)
    assert len(pieces) <= plan.size // (64 * 1024) + 2
    assert sum(len(p.data) for p in pieces if isinstance(p, HeaderBytes)) == plan.size


def test_empty_archive() -> None:
    plan = ZipPlan([])
    archive = render(plan, {})
    assert plan.size == len(archive) == 22
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.namelist() == []


# --- Many entries: the ZIP64 end records ----------------------------------------------------


def test_70000_members(tmp_path: Path) -> None:
    contents = {f"dir{i % 70}/file{i:05d}.txt": str(i).encode() for i in range(70_000)}
    members = [member(name, data) for name, data in contents.items()]
    plan = ZipPlan(members)
    archive = render(plan, contents)
    layout = parse_bytes(archive)
    assert layout.zip64_end is not None
    assert layout.zip64_end[6:8] == (70_000, 70_000)
    count_this_disk, count_total, cd_size, cd_offset = layout.end[3:7]
    assert (count_this_disk, count_total) == (0xFFFF, 0xFFFF)
    assert (cd_size, cd_offset) == layout.zip64_end[8:10]  # small enough: not saturated
    assert ZIP64_EXTRA not in layout.extra_ids()  # offsets and sizes all fit
    # A tiny range in the middle of the central directory is found, not scanned for.
    middle = cd_offset + cd_size // 2
    assert render(plan, contents, middle, middle + 100) == archive[middle : middle + 100]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        names = zf.namelist()
        assert names == list(contents)
        assert zf.read(names[69_999]) == b"69999"
    path = tmp_path / "many.zip"
    path.write_bytes(archive)
    unzip = tool("unzip")
    assert "No errors detected" in run([unzip, "-tq", str(path)])


@pytest.mark.parametrize(("count", "zip64"), [(0xFFFE, False), (0xFFFF, True)])
def test_zip64_end_records_from_65535_entries(count: int, zip64: bool) -> None:
    plan = ZipPlan([Member(f"{i}", 0, 0, T0) for i in range(count)])
    tail = render(plan, {}, plan.size - 22 - 20 - 56)
    assert (tail[:4] == struct.pack("<I", SIG_ZIP64_END)) is zip64
    assert struct.unpack("<H", tail[-12:-10])[0] == min(count, 0xFFFF)


# --- The first-member rule (plan level, fake sizes, headers only) -----------------------------


def huge(name: str, size: int = 5 * GiB) -> Member:
    return Member(name, size, 0x12345678, T0)


def test_a_huge_first_member_is_not_first(tmp_path: Path) -> None:
    given_order = [huge("big1"), huge("big2"), member("small1", b"x"), huge("big3"), member("s2")]
    plan = ZipPlan(given_order)
    assert [m.name for m in plan.members] == ["small1", "big1", "big2", "big3", "s2"]
    layout = parse_plan_headers(plan, tmp_path / "plan.zip")
    first_local, first_central = layout.locals[0], layout.centrals[0]
    assert ZIP64_EXTRA not in first_local.extras
    assert ZIP64_EXTRA not in first_central.extras
    assert first_local.version_needed == 20
    for local, central in zip(layout.locals[1:4], layout.centrals[1:4], strict=True):
        assert local.uncompressed == local.compressed == U32
        assert local.extras[ZIP64_EXTRA] == struct.pack("<QQ", 5 * GiB, 5 * GiB)
        assert local.version_needed == central.version_needed == 45
    # big1 starts below 4 GiB: sizes only. big2, big3 and s2 start beyond: plus the offset.
    assert layout.centrals[1].extras[ZIP64_EXTRA] == struct.pack("<QQ", 5 * GiB, 5 * GiB)
    for central in layout.centrals[2:4]:
        assert central.extras[ZIP64_EXTRA] == struct.pack(
            "<QQQ", 5 * GiB, 5 * GiB, central.local_offset
        )
    s2 = layout.centrals[4]
    assert s2.extras[ZIP64_EXTRA] == struct.pack("<Q", s2.local_offset)
    assert ZIP64_EXTRA not in layout.locals[4].extras
    assert layout.locals[4].version_needed == s2.version_needed == 45
    assert layout.zip64_end is not None
    assert layout.end[5:7] == (layout.zip64_end[8], U32)  # the offset overflows, size not
    with zipfile.ZipFile(tmp_path / "plan.zip") as zf:
        assert [i.file_size for i in zf.infolist()] == [1, *[5 * GiB] * 3, 0]


def test_size_exactly_0xffffffff_needs_zip64(tmp_path: Path) -> None:
    plan = ZipPlan([member("a"), huge("b", U32), huge("c", U32 - 1)])
    layout = parse_plan_headers(plan, tmp_path / "plan.zip")
    assert ZIP64_EXTRA in layout.locals[1].extras
    assert ZIP64_EXTRA not in layout.locals[2].extras
    assert layout.locals[2].uncompressed == U32 - 1


def test_all_huge_members_in_a_folder_get_the_folder_first(tmp_path: Path) -> None:
    plan = ZipPlan([huge("videos/b.mkv"), huge("videos/a.mkv")])
    assert plan.members[0] == Member.directory("videos", T0)
    assert [m.name for m in plan.members] == ["videos/", "videos/b.mkv", "videos/a.mkv"]
    layout = parse_plan_headers(plan, tmp_path / "plan.zip")
    assert ZIP64_EXTRA not in layout.locals[0].extras


def test_only_huge_top_level_files_keep_zip64_first(tmp_path: Path) -> None:
    """Documented exception: no entry is invented, so the first entry uses ZIP64."""
    members = [huge("b.iso"), huge("a.iso")]
    plan = ZipPlan(members)
    assert list(plan.members) == members
    layout = parse_plan_headers(plan, tmp_path / "plan.zip")
    assert ZIP64_EXTRA in layout.locals[0].extras


def test_a_small_first_member_keeps_the_order() -> None:
    members = [member("z"), huge("a"), member("m")]
    assert list(ZipPlan(members).members) == members


# --- Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "/etc/passwd",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "a\\b",
        "a\x00b",
        "a//b",
        "./a",
        "a/./b",
        "a/.",
        "//",
        "\ud800",
        "x" * 65536,
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Member(name, 0, 0, T0)


@pytest.mark.parametrize(
    "members",
    [
        [member("a.txt"), member("a.txt")],
        [member("a/"), member("a/")],
        [member("a"), member("a/")],
        [member("a"), member("a/b")],
        [member("x/a/b"), member("x/a")],
    ],
)
def test_clashing_names_are_refused(members: list[Member]) -> None:
    with pytest.raises(ValueError, match=r"duplicate|parent directory"):
        ZipPlan(members)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "a", "size": -1},
        {"name": "a", "crc32": -1},
        {"name": "a", "crc32": 1 << 32},
        {"name": "a", "mtime": float("nan")},
        {"name": "a", "mtime": float("inf")},
        {"name": "a", "mode": 0o40755},
        {"name": "a/", "mode": 0o100644},
        {"name": "a/", "mode": 0o40755, "size": 1},
        {"name": "a", "mode": 1 << 16},
    ],
)
def test_bad_members_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"size": 0, "crc32": 0, "mtime": T0, **kwargs}
    with pytest.raises(ValueError):  # noqa: PT011
        Member(**fields)  # type: ignore[arg-type]


def test_valid_unusual_names() -> None:
    for name in ["..a", "a..", ".hidden", "a/...", "a b/c d", "日本/語/", "C:x"]:
        Member(name, 0, 0, T0, 0o40755 if name.endswith("/") else 0o100644)


# --- ZIP64 for real: a member of 4 GiB + 1 byte ---------------------------------------------


def zero_crc(size: int) -> int:
    block = bytes(16 << 20)
    crc = 0
    while size:
        n = min(size, len(block))
        crc = zlib.crc32(block[:n] if n < len(block) else block, crc)
        size -= n
    return crc


@pytest.mark.slow
def test_zip64_member_of_4_gib_plus_one(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 12 * GiB:
        pytest.skip("needs 12 GiB free in tmp_path for a 4 GiB archive")
    unzip, seven, bsdtar = tool("unzip"), tool("7z"), tool("bsdtar")
    big_size = 4 * GiB + 1
    big_path = tmp_path / "big.bin"
    with big_path.open("wb") as f:
        f.truncate(big_size)  # sparse: all zeros, no disk space
    first_path, last_path = tmp_path / "first.txt", tmp_path / "last.txt"
    first_path.write_bytes(b"first\n")
    last_path.write_bytes(b"last\n" * 1000)
    members = [
        Member("a/first.txt", 6, zlib.crc32(b"first\n"), T0, source=first_path),
        Member("a/big.bin", big_size, zero_crc(big_size), T0 + 10, source=big_path),
        Member("a/last.txt", 5000, zlib.crc32(b"last\n" * 1000), T0 + 20, source=last_path),
    ]
    plan = ZipPlan(members)
    archive = tmp_path / "big.zip"
    try:
        write_archive(plan, archive)
        with archive.open("rb") as f:
            layout = parse(f)
        first, big, last = zip(layout.locals, layout.centrals, strict=True)
        assert ZIP64_EXTRA not in first[0].extras
        assert ZIP64_EXTRA not in first[1].extras
        assert big[0].extras[ZIP64_EXTRA] == struct.pack("<QQ", big_size, big_size)
        assert big[1].extras[ZIP64_EXTRA] == struct.pack("<QQ", big_size, big_size)
        assert ZIP64_EXTRA not in last[0].extras
        assert last[1].extras[ZIP64_EXTRA] == struct.pack("<Q", last[1].local_offset)
        assert last[1].local_offset > U32
        assert layout.zip64_end is not None

        with zipfile.ZipFile(archive) as zf:
            assert [(i.filename, i.file_size) for i in zf.infolist()] == [
                (m.name, m.size) for m in members
            ]
            assert zf.testzip() is None
            assert zf.read("a/last.txt") == b"last\n" * 1000
        assert "No errors detected" in run([unzip, "-tq", str(archive)])
        assert "Everything is Ok" in run([seven, "t", str(archive)])
        # bsdtar reads the whole 4 GiB from a pipe and must find the sizes in the local
        # ZIP64 extra field to get past the big member.
        # A real pipe, so that bsdtar cannot seek to the central directory.
        with subprocess.Popen([tool("cat"), str(archive)], stdout=subprocess.PIPE) as cat:
            listing = subprocess.run(
                [bsdtar, "-tvf", "-"], stdin=cat.stdout, capture_output=True, check=True
            ).stdout.decode()
        assert cat.returncode == 0
        listed = bsdtar_listing(listing)
        assert {name: size for name, (_, size) in listed.items()} == {
            m.name: m.size for m in members
        }
    finally:
        archive.unlink(missing_ok=True)
        big_path.unlink()
