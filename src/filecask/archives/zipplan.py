"""A byte-exact plan for a streamed ZIP archive of stored (uncompressed) members.

Pure: no I/O and no aiohttp. The caller knows every member's name, size, CRC-32, mtime and
mode before sending anything; from that :class:`ZipPlan` fixes the position of every byte,
so the server can send an exact ``Content-Length`` and answer any ``Range`` by slicing.
:meth:`ZipPlan.segments` describes ``archive[start:end]`` as generated header bytes
(:class:`HeaderBytes`) and slices of member data (:class:`DataSlice`) that the server reads
from wherever ``Member.source`` points.

Format choices, with the APPNOTE.TXT (6.3.x) sections they follow:

- Compression method 0, stored (4.4.5): the data is the file, so sizes are known upfront.
- No data descriptors: general purpose bit 3 is never set (4.4.4), the CRC-32 and both
  sizes are in the local header (4.3.7), so a streaming reader that sees only local headers
  (``bsdtar -xf -`` from a pipe) can extract everything.
- Bit 11 (language encoding flag, 4.4.4 and appendix D.2) on every entry; names are UTF-8.
- "version made by" (4.4.2) is Unix (3) / 6.3; external attributes (4.4.15) carry the
  Unix ``st_mode`` in the high 16 bits (plus the MS-DOS directory bit 0x10 for folders).
  "version needed" (4.4.3.2) is 2.0, or 4.5 for an entry that uses ZIP64.
- DOS date and time (4.4.6) in UTC, clamped to 1980..2107, so the bytes never depend on the
  server's time zone; plus the Info-ZIP extended timestamp extra field 0x5455 (4.5.2 lists
  the id, Info-ZIP's extrafld.txt defines it) with the exact whole-second mtime in both
  headers, which Info-ZIP unzip, bsdtar and 7-Zip restore in preference to the DOS time.
- ZIP64 (4.3.14, 4.3.15, 4.5.3) only where a value does not fit: a member of 0xFFFFFFFF
  bytes or more gets the ZIP64 extended information extra field in its local and central
  headers, a member whose local header starts at or beyond 0xFFFFFFFF gets its offset
  there in the central header, and the ZIP64 end of central directory record and locator
  are written only when the entry count, the directory's size or its offset overflows the
  classic end record (4.3.16). An archive that needs none of this contains none of it.
- The first entry never uses ZIP64 if that can be helped; see :class:`ZipPlan`.

Same members in, same bytes out: nothing here reads a clock, a locale or the environment.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import math
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["DataSlice", "HeaderBytes", "Member", "ZipPlan"]

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

# 4.3.7 local file header, 4.3.12 central directory header, 4.3.14 ZIP64 end of central
# directory record, 4.3.15 ZIP64 end of central directory locator, 4.3.16 end of central
# directory record. All little-endian (4.4.1.1).
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_SIG_LOCAL = 0x04034B50
_SIG_CENTRAL = 0x02014B50
_SIG_ZIP64_END = 0x06064B50
_SIG_ZIP64_LOCATOR = 0x07064B50
_SIG_END = 0x06054B50

# 4.4.2.1/4.4.2.2: upper byte 3 = UNIX; 4.4.2.3: lower byte = APPNOTE version 6.3 (10 * 6 + 3).
_VERSION_MADE_BY = (3 << 8) | 63
# 4.4.3.2: 2.0 is enough for stored files and folders; 4.5 for ZIP64 format extensions.
_VERSION_NEEDED = 20
_VERSION_NEEDED_ZIP64 = 45
# 4.4.4 bit 11: file name (and comment) are UTF-8. Bit 3 (data descriptor) stays clear.
_FLAG_UTF8 = 1 << 11
_METHOD_STORED = 0  # 4.4.5
_MSDOS_DIRECTORY = 0x10  # 4.4.15: low byte of external attributes is the MS-DOS attribute

# 4.5.3 ZIP64 extended information extra field (header id 0x0001).
_EXTRA_ZIP64 = 0x0001
# Extended timestamp (header id 0x5455, "UT"; 4.5.2, defined in Info-ZIP's extrafld.txt):
# flags with bit 0 = "mtime present", then mtime as a 4-byte Unix time. The central copy
# carries only the mtime in either case, so both headers have the same 9 bytes.
_EXTRA_TIME = 0x5455
_EXTRA_TIME_STRUCT = struct.Struct("<HHBI")
_EXTRA_TIME_LEN = _EXTRA_TIME_STRUCT.size  # 9

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# 4.4.6 MS-DOS date: years 1980..2107 (7 bits from 1980), 2-second resolution.
_DOS_MIN = int((dt.datetime(1980, 1, 1, tzinfo=dt.UTC) - _EPOCH).total_seconds())
_DOS_MAX = int((dt.datetime(2107, 12, 31, 23, 59, 58, tzinfo=dt.UTC) - _EPOCH).total_seconds())

# segments() joins adjacent header pieces (say, the central directory) up to this size so
# the caller does not write 70,000 tiny chunks.
_COALESCE = 64 * 1024

DIRECTORY_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644


@dataclass(frozen=True, slots=True)
class Member:
    """One archive entry. ``source`` is opaque here: the server's handle for the data.

    ``name`` is a relative '/'-separated path; a directory's name ends with '/' and its
    mode is a directory mode (see :meth:`directory`). Invalid members raise ValueError.
    """

    name: str
    size: int
    crc32: int
    mtime: float
    mode: int = FILE_MODE
    source: object = None

    def __post_init__(self) -> None:
        _validate_name(self.name)
        is_dir = self.name.endswith("/")
        if self.size < 0:
            raise ValueError(f"negative size for {self.name!r}")
        if not 0 <= self.crc32 <= _U32:
            raise ValueError(f"CRC-32 out of range for {self.name!r}")
        if not math.isfinite(self.mtime):
            raise ValueError(f"mtime is not a finite number for {self.name!r}")
        if not 0 <= self.mode <= _U16:
            raise ValueError(f"mode does not fit in 16 bits for {self.name!r}")
        if is_dir != stat.S_ISDIR(self.mode):
            raise ValueError(
                f"{self.name!r}: a name ends with '/' exactly when the mode is a directory's"
            )
        if is_dir and (self.size or self.crc32):
            raise ValueError(f"directory {self.name!r} must have size 0 and CRC-32 0")

    @classmethod
    def directory(cls, name: str, mtime: float, mode: int = DIRECTORY_MODE) -> Member:
        """An empty directory entry; a trailing '/' is added to ``name`` if missing."""
        return cls(name if name.endswith("/") else name + "/", 0, 0, mtime, mode)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    @property
    def needs_zip64(self) -> bool:
        """Whether the size needs the ZIP64 extra field (0xFFFFFFFF is the 4.4.8 sentinel)."""
        return self.size >= _U32


@dataclass(frozen=True, slots=True)
class HeaderBytes:
    """Generated archive bytes (headers, central directory, end records)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataSlice:
    """``length`` bytes of ``member``'s data starting at ``offset`` within that data."""

    member: Member
    offset: int
    length: int


Segment = HeaderBytes | DataSlice


def _validate_name(name: str) -> None:
    if not name or name == "/":
        raise ValueError("empty member name")
    if "\\" in name or "\x00" in name:
        raise ValueError(f"backslash or NUL in member name {name!r}")
    if name.startswith("/"):
        raise ValueError(f"absolute member name {name!r}")
    for part in name.removesuffix("/").split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"empty, '.' or '..' component in member name {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"member name {name!r} is not valid Unicode") from exc
    if len(encoded) > _U16:  # 4.4.10: a 2-byte length
        raise ValueError(f"member name longer than 65535 bytes: {name[:40]!r}...")


@functools.lru_cache(maxsize=4096)
def _dos_date_time(mtime: float) -> tuple[int, int]:
    """4.4.6: (date, time) in UTC, clamped to what the format can hold."""
    seconds = min(max(math.floor(mtime), _DOS_MIN), _DOS_MAX)
    t = _EPOCH + dt.timedelta(seconds=seconds)
    date = ((t.year - 1980) << 9) | (t.month << 5) | t.day
    time = (t.hour << 11) | (t.minute << 5) | (t.second // 2)
    return date, time


def _unix_time(mtime: float) -> int:
    """The extended timestamp's 4-byte Unix time, clamped (1970..2106, read as unsigned)."""
    return min(max(math.floor(mtime), 0), _U32)


def _first_without_zip64(members: list[Member]) -> list[Member]:
    """Make the first entry one that needs no ZIP64 extra field, if possible; see ZipPlan."""
    if not members or not members[0].needs_zip64:
        return members
    for index, member in enumerate(members):
        if not member.needs_zip64:
            return [member, *members[:index], *members[index + 1 :]]
    first = members[0]
    top, slash, _ = first.name.partition("/")
    if not slash:
        return members  # only huge top-level files: nothing sane to put in front of them
    return [Member.directory(top, first.mtime), *members]


def _check_names(members: Sequence[Member]) -> None:
    """No two entries for one path, and no file where another entry needs a directory."""
    paths: set[str] = set()
    files: set[str] = set()
    parents: set[str] = set()
    for member in members:
        path = member.name.removesuffix("/")
        if path in paths:
            raise ValueError(f"duplicate member name {member.name!r}")
        paths.add(path)
        if not member.is_dir:
            files.add(path)
        parts = path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clashes = files & parents
    if clashes:
        raise ValueError(f"member {min(clashes)!r} is a file and also a parent directory")


class ZipPlan:
    """The exact layout of a ZIP archive of ``members``, stored, in the given order.

    First-member rule: Apple's Archive Utility mishandles archives whose first entry uses
    ZIP64, so if the first member is 0xFFFFFFFF bytes or larger, the first member that is
    smaller moves to the front (everything else keeps its order). If every member is that
    large and the first lives in a folder, an entry for its top-level folder (mtime of that
    member) is put in front, which changes nothing on extraction. If every member is a huge
    top-level file, the order is kept and the first entry does use ZIP64: inventing an
    entry the caller did not ask for would put something unwanted on the user's disk.
    The final order is :attr:`members`.
    """

    __slots__ = (
        "_cd_offset",
        "_cd_size",
        "_central_starts",
        "_digest",
        "_local_starts",
        "_members",
        "_names",
        "_size",
        "_trailer",
        "_trailer_start",
    )

    def __init__(self, members: Sequence[Member]) -> None:
        _check_names(members)
        ordered = _first_without_zip64(list(members))
        self._members = tuple(ordered)
        self._names = [m.name.encode("utf-8") for m in ordered]
        self._local_starts: list[int] = []
        offset = 0
        for member, name in zip(ordered, self._names, strict=True):
            self._local_starts.append(offset)
            offset += _local_header_size(member, name) + member.size
        self._cd_offset = offset
        self._central_starts: list[int] = []
        for member, name, local in zip(ordered, self._names, self._local_starts, strict=True):
            self._central_starts.append(offset)
            offset += _central_header_size(member, name, local)
        self._cd_size = offset - self._cd_offset
        self._trailer_start = offset
        self._trailer = _end_records(len(ordered), self._cd_size, self._cd_offset)
        self._size = offset + len(self._trailer)
        self._digest: bytes | None = None

    @property
    def members(self) -> tuple[Member, ...]:
        """The entries in archive order (after the first-member rule)."""
        return self._members

    @property
    def size(self) -> int:
        """The exact length of the archive in bytes."""
        return self._size

    @property
    def etag_material(self) -> bytes:
        """SHA-256 of the central directory and end records.

        They encode every entry's name, size, CRC-32, whole-second mtime, mode and offset,
        so this changes whenever the archive's bytes would, except for a data change that
        keeps both size and CRC-32: mix in the members' content identity for a strong ETag.
        """
        if self._digest is None:
            digest = hashlib.sha256()
            for index in range(len(self._members)):
                digest.update(self._central_header(index))
            digest.update(self._trailer)
            self._digest = digest.digest()
        return self._digest

    def segments(self, start: int = 0, end: int | None = None) -> Iterator[Segment]:
        """``archive[start:end]`` as in-order pieces, none of them empty.

        Adjacent header bytes are joined (up to 64 KiB per piece). O(log n) to find the
        start, then proportional to the number of pieces produced.
        """
        if end is None:
            end = self._size
        if not 0 <= start <= end <= self._size:
            raise ValueError(f"range [{start}, {end}) outside archive of {self._size} bytes")
        pending: list[bytes] = []
        pending_len = 0
        for segment in self._pieces(start, end):
            if isinstance(segment, HeaderBytes):
                pending.append(segment.data)
                pending_len += len(segment.data)
                if pending_len < _COALESCE:
                    continue
                segment = HeaderBytes(b"".join(pending))
                pending, pending_len = [], 0
            elif pending:
                yield HeaderBytes(b"".join(pending))
                pending, pending_len = [], 0
            yield segment
        if pending:
            yield HeaderBytes(b"".join(pending))

    def _pieces(self, start: int, end: int) -> Iterator[Segment]:
        """Uncoalesced pieces of ``[start, end)``, clipped; empty ones skipped."""
        n = len(self._members)
        pos = start
        if pos < self._cd_offset:
            i = bisect.bisect_right(self._local_starts, pos) - 1
            while i < n and pos < end:
                member = self._members[i]
                local = self._local_starts[i]
                header = self._local_header(i)
                data_start = local + len(header)
                if pos < data_start:
                    stop = min(end, data_start)
                    yield HeaderBytes(header[pos - local : stop - local])
                    pos = stop
                data_end = data_start + member.size
                if pos < end and pos < data_end:
                    stop = min(end, data_end)
                    yield DataSlice(member, pos - data_start, stop - pos)
                    pos = stop
                i += 1
        if pos < end and pos < self._trailer_start:
            i = bisect.bisect_right(self._central_starts, pos) - 1
            while i < n and pos < end:
                header_start = self._central_starts[i]
                header = self._central_header(i)
                stop = min(end, header_start + len(header))
                yield HeaderBytes(header[pos - header_start : stop - header_start])
                pos = stop
                i += 1
        if pos < end:
            yield HeaderBytes(self._trailer[pos - self._trailer_start : end - self._trailer_start])

    def _local_header(self, index: int) -> bytes:
        """4.3.7 local file header, with the CRC-32 and sizes (no data descriptor)."""
        member, name = self._members[index], self._names[index]
        date, time = _dos_date_time(member.mtime)
        extra = _time_extra(member.mtime)
        size32 = member.size
        if member.needs_zip64:
            # 4.5.3: in the local header the ZIP64 field MUST hold both sizes, and the
            # fixed fields are 0xFFFFFFFF.
            size32 = _U32
            extra = struct.pack("<HHQQ", _EXTRA_ZIP64, 16, member.size, member.size) + extra
        version = _VERSION_NEEDED_ZIP64 if self._entry_uses_zip64(index) else _VERSION_NEEDED
        fixed = _LOCAL.pack(
            _SIG_LOCAL,
            version,
            _FLAG_UTF8,
            _METHOD_STORED,
            time,
            date,
            member.crc32,
            size32,  # compressed size: stored, so the same
            size32,
            len(name),
            len(extra),
        )
        return fixed + name + extra

    def _central_header(self, index: int) -> bytes:
        """4.3.12 central directory file header."""
        member, name = self._members[index], self._names[index]
        local = self._local_starts[index]
        date, time = _dos_date_time(member.mtime)
        # 4.5.3: only the fields whose fixed counterpart is 0xFFFFFFFF, in this order:
        # original size, compressed size, local header offset (disk number never).
        zip64: list[int] = []
        size32 = member.size
        if member.needs_zip64:
            size32 = _U32
            zip64 += [member.size, member.size]
        offset32 = local
        if local >= _U32:
            offset32 = _U32
            zip64.append(local)
        extra = b""
        if zip64:
            extra = struct.pack(f"<HH{len(zip64)}Q", _EXTRA_ZIP64, 8 * len(zip64), *zip64)
        extra += _time_extra(member.mtime)
        attributes = (member.mode & _U16) << 16
        if member.is_dir:
            attributes |= _MSDOS_DIRECTORY
        fixed = _CENTRAL.pack(
            _SIG_CENTRAL,
            _VERSION_MADE_BY,
            _VERSION_NEEDED_ZIP64 if zip64 else _VERSION_NEEDED,
            _FLAG_UTF8,
            _METHOD_STORED,
            time,
            date,
            member.crc32,
            size32,
            size32,
            len(name),
            len(extra),
            0,  # file comment length
            0,  # disk number start
            0,  # internal file attributes
            attributes,
            offset32,
        )
        return fixed + name + extra

    def _entry_uses_zip64(self, index: int) -> bool:
        return self._members[index].needs_zip64 or self._local_starts[index] >= _U32


@functools.lru_cache(maxsize=4096)
def _time_extra(mtime: float) -> bytes:
    return _EXTRA_TIME_STRUCT.pack(_EXTRA_TIME, 5, 1, _unix_time(mtime))


def _local_header_size(member: Member, name: bytes) -> int:
    zip64 = 4 + 16 if member.needs_zip64 else 0
    return _LOCAL.size + len(name) + zip64 + _EXTRA_TIME_LEN


def _central_header_size(member: Member, name: bytes, local: int) -> int:
    fields = (2 if member.needs_zip64 else 0) + (1 if local >= _U32 else 0)
    zip64 = 4 + 8 * fields if fields else 0
    return _CENTRAL.size + len(name) + zip64 + _EXTRA_TIME_LEN


def _end_records(count: int, cd_size: int, cd_offset: int) -> bytes:
    """4.3.16 end of central directory, preceded by 4.3.14/4.3.15 only when needed."""
    records = b""
    if count >= _U16 or cd_size >= _U32 or cd_offset >= _U32:
        zip64_end_offset = cd_offset + cd_size
        records = _ZIP64_END.pack(
            _SIG_ZIP64_END,
            _ZIP64_END.size - 12,  # 4.3.14.1: size of the record after this field
            _VERSION_MADE_BY,
            _VERSION_NEEDED_ZIP64,
            0,  # number of this disk
            0,  # disk with the start of the central directory
            count,  # entries on this disk
            count,  # entries in total
            cd_size,
            cd_offset,
        ) + _ZIP64_LOCATOR.pack(
            _SIG_ZIP64_LOCATOR,
            0,  # disk with the ZIP64 end of central directory record
            zip64_end_offset,
            1,  # total number of disks
        )
    # 4.4.1.4: a value too large for its field is 0xFFFF/0xFFFFFFFF, the real one in ZIP64.
    return records + _END.pack(
        _SIG_END,
        0,  # number of this disk
        0,  # disk with the start of the central directory
        min(count, _U16),
        min(count, _U16),
        min(cd_size, _U32),
        min(cd_offset, _U32),
        0,  # comment length
    )
