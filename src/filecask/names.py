"""What a user may call a file, and what a path inside a ZIP may be.

Names end up in Content-Disposition headers, ZIP entries, listings and logs, so they are
checked once, here, when they enter the system.

Every name and path refuses the characters that hide or disguise text: controls (C0, DEL,
C1), format characters (Unicode category Cf: the bidirectional controls U+061C, U+200E,
U+200F, U+202A-U+202E, U+2066-U+2069, the zero-width U+200B-U+200D, U+2060, U+FEFF, the
soft hyphen, tag characters...), line and paragraph separators, lone surrogates (what a
name that was not UTF-8 decodes to) and the non-characters (U+FDD0-U+FDEF, U+xxFFFE,
U+xxFFFF). `invoice\\u202efdp.exe` would show as `invoiceexe.pdf`; it is refused, and the
refusal names the code point.

A path inside a ZIP must also extract safely on Windows and macOS: no drive letter, no
`:` (an NTFS alternate data stream; the path separator of classic macOS), none of
`< > " | ? *`, no component ending with a dot or a space (Windows drops them, so `a.` and
`a` are the same file), no reserved device name (`CON`, `aux.txt`, `COM1`, `LPT¹`...) and
no component over 255 bytes. The same rules hold for what a path reads as after Unicode
compatibility normalisation (NFKC) or Windows' "best-fit" conversion to a code page (the
WorstFit attacks: an unzip tool that calls the ANSI file API turns `\uff0e\uff0e\uff0fevil`
into `../evil`): a character that reads as one of `/ \\ : < > " | ? *` (the fullwidth and
small forms, U+2215 DIVISION SLASH, U+2044 FRACTION SLASH, U+2216 SET MINUS, U+00A5 YEN
SIGN on Japanese Windows, U+A789 MODIFIER LETTER COLON...) is refused, naming its code
point, and so is a component that reads as `.` or `..` (U+2025 TWO DOT LEADER), as ending
with a dot or a space (`notes\u2026`) or, accents dropped, as a device name (fullwidth
`con`, `c\u014dn`). Accents, every script, emoji and `\u2026` inside a name stay
allowed. Two entries of one archive must not be the same file where
names are compared after Unicode normalisation and case folding (macOS, Windows): no two
paths equal after NFC + case-fold, and no file whose folded path is also a folder of
another entry.

`safe_entry_names` is the other side: the names a ZIP is served with, made to follow these
rules (for folders on disk and for bundles saved before the rules existed), renaming
rather than dropping.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from filecask.errors import InvalidName

NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 1024
COMPONENT_MAX_BYTES = 255

_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character (bidirectional control, zero-width...)",
    "Cs": "a lone surrogate (the name was not valid UTF-8)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WINDOWS_CHARACTERS = frozenset('<>:"|?*\\')
_DRIVE = re.compile(r"[A-Za-z]:")
_SUPERSCRIPT_DIGITS = "\u00b9\u00b2\u00b3"
RESERVED_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789" + _SUPERSCRIPT_DIGITS}
)
"""Windows opens the device for these names, with any extension and in any case."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A character no name may contain, where it was found and why."""

    index: int
    char: str
    reason: str

    @property
    def code(self) -> str:
        """`U+202E`."""
        return f"U+{ord(self.char):04X}"

    @property
    def label(self) -> str:
        """`U+202E RIGHT-TO-LEFT OVERRIDE`."""
        name = unicodedata.name(self.char, "")
        return self.code + (f" {name}" if name else "")


def refused_character(text: str) -> Refused | None:
    """The first character of `text` no name may contain, or None."""
    if text.isprintable():  # the common case, in C: no Cc, Cf, Cs, Zl, Zp, Cn (nor Co, Zs)
        return None
    for index, char in enumerate(text):
        reason = _character_reason(char)
        if reason is not None:
            return Refused(index, char, reason)
    return None


def _character_reason(char: str) -> str | None:
    point = ord(char)
    if 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE:
        return "a non-character"
    category = unicodedata.category(char)
    if category == "Cf" and char in _BIDI:
        return "a bidirectional control, which can disguise a name"
    return _REFUSED_CATEGORIES.get(category)


def shown(text: str, limit: int = 200) -> str:
    """`text` safe to echo in an answer or a log line: every character that is not
    printable (controls, bidi controls, surrogates...) as a `\\uXXXX` escape."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    point = ord(char)
    return (
        f"\\x{point:02x}"
        if point < 0x100
        else f"\\u{point:04x}"
        if point < 0x10000
        else f"\\U{point:08x}"
    )


def validate_file_name(name: str) -> str:
    """A file name is what a user calls their copy: one path segment, printable."""
    found = refused_character(name)
    if found is not None:
        raise InvalidName(
            f"A file name may not contain {found.label}: it is {found.reason}.",
            code_point=found.code,
            position=found.index,
        )
    if not name or name in {".", ".."}:
        raise InvalidName("A file name must not be empty, '.' or '..'.")
    if len(name.encode()) > NAME_MAX_BYTES:
        raise InvalidName(f"A file name has at most {NAME_MAX_BYTES} bytes of UTF-8.")
    if "/" in name or "\\" in name:
        raise InvalidName("A file name may not contain '/' or '\\'.")
    return name


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside an archive, or None if it can."""
    if not path:
        return "is empty"
    found = refused_character(path)
    if found is not None:
        return f"contains {found.label} at position {found.index}: it is {found.reason}"
    if len(path.encode()) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    problem = _safety_problem(path)
    if problem is not None:
        return problem
    found = lookalike_character(path)
    if found is not None:
        return f"contains {found.label} at position {found.index}: {found.reason}"
    return None


_LOOKALIKES = {
    **dict.fromkeys("\u2044\u2215\u2571\u29f8", "/"),
    **dict.fromkeys("\u00a5\u20a9\u2216\u2572\u29f5\u29f9", "\\"),
    **dict.fromkeys("\u0589\u05c3\u2236\ua789", ":"),
    **dict.fromkeys("\u02ba\u02ee", '"'),
    **dict.fromkeys("\u01c0\u2223", "|"),
    "\u2217": "*",
}
"""What Windows' best-fit tables turn these into (where NFKC leaves them as they are):
the slashes, `¥` (code page 932) and `₩` (949) as the path separator, the colons..."""
_LOOKALIKE_CLASS = re.compile("[" + re.escape("".join(_LOOKALIKES)) + "]")
_SEPARATING = frozenset('/<>:"|?*\\')


def _reads_as(char: str) -> str:
    """What `char` may become on another system: its best-fit form, else its NFKC form."""
    return _LOOKALIKES.get(char) or unicodedata.normalize("NFKC", char)


def _skeleton(part: str) -> str:
    """`part` as it reads with compatibility forms and accents dropped (a fullwidth `c`
    and `\u014d` read as `co`)."""
    decomposed = unicodedata.normalize("NFKD", part)
    return "".join(_reads_as(c) for c in decomposed if not unicodedata.combining(c))


def lookalike_character(path: str) -> Refused | None:
    """The first character of a (printable, otherwise valid) `path` that makes it read, after
    NFKC or Windows best-fit conversion, as a path the rules refuse; or None."""
    if path.isascii():
        return None
    plain = unicodedata.is_normalized("NFKC", path) and not _LOOKALIKE_CLASS.search(path)
    start = 0
    for part in path.split("/"):
        found = None if part.isascii() else _lookalike_in_component(part, plain)
        if found is not None:
            return Refused(start + found.index, found.char, found.reason)
        start += len(part) + 1
    return None


def _lookalike_in_component(part: str, plain: bool) -> Refused | None:
    first = next(i for i, c in enumerate(part) if not c.isascii())
    if not plain:
        read = [c if c.isascii() else _reads_as(c) for c in part]
        for index, (char, reading) in enumerate(zip(part, read, strict=True)):
            bad = next((c for c in reading if c in _SEPARATING), None)
            if bad is not None and reading != char:
                return Refused(index, char, f"it reads as {bad!r} {_AFTER}")
        text = "".join(read)
        if text in {".", ".."}:
            return Refused(first, part[first], f"the component reads as {text!r} {_AFTER}")
        if text[-1] in ". ":
            reason = f"the component reads as ending with a dot or a space {_AFTER}"
            return Refused(len(part) - 1, part[-1], reason)
    if _skeleton(part[:8]).lower().startswith(_RESERVED_STARTS) and is_reserved_device_name(
        _skeleton(part)
    ):  # the skeleton of a prefix is a prefix of the skeleton: only a few are built whole
        return Refused(first, part[first], f"the component reads as a device name {_AFTER}")
    return None


_AFTER = "after Unicode compatibility normalisation (NFKC) or Windows best-fit conversion"


_BAD_CHARACTERS = re.compile(r'[<>:"|?*\\]')
_RESERVED_STARTS = tuple(sorted({name[:3].lower() for name in RESERVED_DEVICE_NAMES}))
_RESERVED_AFTER_SLASH = re.compile("/(?:" + "|".join(_RESERVED_STARTS) + ")")


def _may_break_rules(path: str) -> bool:
    """Whether `path` could break a rule of `_safety_problem` (a superset, all in C calls):
    when False, the path follows them all."""
    if _BAD_CHARACTERS.search(path) or "//" in path or "./" in path or " /" in path:
        return True
    if not path or path[0] == "/" or path[-1] in "/. ":
        return True
    lowered = path.lower()
    if lowered.startswith(_RESERVED_STARTS) or _RESERVED_AFTER_SLASH.search(lowered):
        return True
    return len(path) * 4 > COMPONENT_MAX_BYTES and any(
        len(part.encode()) > COMPONENT_MAX_BYTES for part in path.split("/")
    )


def _safety_problem(path: str) -> str | None:
    """The rules that make a (printable) path safe to extract on every client."""
    if not _may_break_rules(path):
        return None
    if path.startswith("/") or "\\" in path:
        return "must be relative, with '/' separators"
    if _DRIVE.match(path):
        return "starts with a drive letter, which Windows resolves outside the archive's folder"
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return "has an empty, '.' or '..' component"
    for part in parts:
        problem = _component_problem(part)
        if problem is not None:
            return f"has a component '{shown(part)}' that {problem}"
    return None


def _component_problem(part: str) -> str | None:
    if ":" in part:
        return "contains ':' (an alternate data stream on Windows, a separator on macOS)"
    bad = next((c for c in part if c in _WINDOWS_CHARACTERS), None)
    if bad is not None:
        return f"contains {bad!r}, which Windows does not allow in file names"
    if part[-1] in ". ":
        return "ends with a dot or a space, which Windows drops"
    if is_reserved_device_name(part):
        return "is a reserved device name on Windows"
    if len(part.encode()) > COMPONENT_MAX_BYTES:
        return f"is longer than {COMPONENT_MAX_BYTES} bytes"
    return None


def is_reserved_device_name(part: str) -> bool:
    """`CON`, `con.txt`, `Aux.tar.gz`, `COM¹`, `lpt1 .log`: Windows opens a device."""
    if len(part) < 3:
        return False
    stem = part.split(".", 1)[0].rstrip(" ")
    return stem.upper() in RESERVED_DEVICE_NAMES


def fold(path: str) -> str:
    """The form two paths are compared in: canonical caseless (NFD, case-fold, NFC), as
    case-insensitive, normalisation-insensitive file systems (APFS, HFS+, NTFS) do."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", path).casefold())


def parents(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class Collision(ValueError):
    """Two entries that would be one file on a case-insensitive file system."""

    def __init__(self, first: int, second: int, folder: bool) -> None:
        super().__init__(first, second, folder)
        self.first = first
        self.second = second
        self.folder = folder
        """True: `second` is a file whose folded path is a folder of entry `first`."""


def check_collisions(paths: Sequence[str]) -> None:
    """Raise `Collision` if two of `paths` (files) are the same after `fold`, or a file's
    folded path is a folder of another entry."""
    seen: dict[str, int] = {}
    folders: dict[str, int] = {}
    for index, path in enumerate(paths):
        key = fold(path)
        if key in seen:
            raise Collision(seen[key], index, folder=False)
        seen[key] = index
        cut = key.rfind("/")
        while cut > 0:
            parent = key[:cut]
            if parent in folders:
                break  # its own parents are in already
            folders[parent] = index
            cut = key.rfind("/", 0, cut)
    for key, index in seen.items():
        if key in folders:
            raise Collision(folders[key], index, folder=True)


def safe_file_name(name: str, default: str) -> str:
    """`name` with every refused character and '/' or '\\' replaced by '_' (`default` if
    nothing usable is left): what an answer offers as a download's name."""
    try:
        return validate_file_name(name)
    except InvalidName:
        pass
    cleaned = "".join("_" if c in "/\\" or _character_reason(c) is not None else c for c in name)
    cleaned = _truncate(cleaned, NAME_MAX_BYTES)
    try:
        return validate_file_name(cleaned)
    except InvalidName:
        return default


def safe_entry_names(entries: Sequence[tuple[str, bool]]) -> list[str | None]:
    """The names to give a ZIP's entries ((path, is_directory) each, no trailing '/'), so
    that the archive follows every rule above; None drops a directory entry that became
    the same as an earlier one. Paths that already follow the rules keep their names.

    Each component is cleaned (refused characters, ':' and the Windows characters become
    '_', trailing dots and spaces too, a reserved device name gets a '_' in front, an
    over-long component is cut); then a file whose folded path is taken by an earlier
    file, or is a folder of any entry, becomes `name (2).ext`, `name (3).ext`... at the
    first free name. Directories are never renamed: two that fold alike merge, harmlessly.
    """
    if _all_safe(entries):
        return [path for path, _ in entries]
    cleaned = [("/".join(_safe_component(p) for p in path.split("/")), d) for path, d in entries]
    folders = {fold(path) for path, is_dir in cleaned if is_dir}
    for path, _ in cleaned:
        folders.update(parents(fold(path)))
    taken = {fold(path) for path, is_dir in cleaned if not is_dir}
    used: set[str] = set()
    seen_dirs: set[str] = set()
    names: list[str | None] = []
    for path, is_dir in cleaned:
        if is_dir:
            names.append(None if path in seen_dirs else path)
            seen_dirs.add(path)
            continue
        key = fold(path)
        if key in used or key in folders:
            number = 2
            while True:
                candidate = _numbered(path, number)
                key = fold(candidate)
                if key not in used and key not in folders and key not in taken:
                    path = candidate
                    break
                number += 1
        used.add(key)
        names.append(path)
    return names


def _all_safe(entries: Sequence[tuple[str, bool]]) -> bool:
    if any(
        refused_character(path) is not None
        or _safety_problem(path) is not None
        or lookalike_character(path) is not None
        for path, _ in entries
    ):
        return False
    files = [path for path, is_dir in entries if not is_dir]
    try:
        check_collisions(files)
    except Collision:
        return False
    return not {fold(path) for path in files} & {fold(p) for p, is_dir in entries if is_dir}


def _safe_component(part: str) -> str:
    cleaned = (
        part
        if part.isprintable() and not _BAD_CHARACTERS.search(part)
        else "".join(
            "_" if c in _WINDOWS_CHARACTERS or _character_reason(c) is not None else c for c in part
        )
    )
    if not cleaned.isascii():  # what reads as a separator on another system becomes '_' too
        cleaned = "".join(
            "_" if not c.isascii() and _SEPARATING.intersection(_reads_as(c)) else c
            for c in cleaned
        )
    if cleaned in {"", ".", ".."} or _read(cleaned) in {".", ".."}:
        return "_"
    if is_reserved_device_name(cleaned) or is_reserved_device_name(_skeleton(cleaned)):
        cleaned = "_" + cleaned
    cleaned = _truncate(cleaned, COMPONENT_MAX_BYTES)
    kept = cleaned
    while kept and _read(kept[-1])[-1:] in (".", " "):
        kept = kept[:-1]
    return cleaned if kept == cleaned else kept + "_"


def _read(text: str) -> str:
    return text if text.isascii() else "".join(_reads_as(c) for c in text)


def _numbered(path: str, number: int) -> str:
    """`a/notes.txt` -> `a/notes (2).txt`, the component kept within its byte limit."""
    folder, _, last = path.rpartition("/")
    dot = last.rfind(".")
    stem, ext = (last[:dot], last[dot:]) if dot > 0 else (last, "")
    mark = f" ({number})"
    room = COMPONENT_MAX_BYTES - len((mark + ext).encode())
    renamed = (
        _truncate(stem, room) + mark + ext
        if room > 0
        else _truncate(last, COMPONENT_MAX_BYTES - len(mark)) + mark
    )
    return f"{folder}/{renamed}" if folder else renamed


def _truncate(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


def user_name_key(name: str) -> str:
    """The form user names are unique by and looked up by: NFKC, case-folded, NFKC again
    (Unicode's NFKC_Casefold, near enough). `Admin`, `ADMIN` and a fullwidth `admin`
    (U+FF41...) are all `admin`; `ädmin` stays `ädmin`. Never raises, whatever the text
    (a made-up name from a Basic header, a lone surrogate)."""
    if has_surrogate(name):
        name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def has_surrogate(text: str) -> bool:
    """A lone surrogate (JSON allows `"\\udcff"`): text that cannot be UTF-8 encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
