"""File names and archive paths: characters that disguise a name, paths that are harmful
when extracted on Windows or macOS, collisions after NFC + case-fold, and the renaming
that makes any set of paths safe (folders on disk, bundles saved before the rules)."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from filecask.errors import InvalidName
from filecask.names import (
    COMPONENT_MAX_BYTES,
    NAME_MAX_BYTES,
    Collision,
    check_collisions,
    fold,
    is_reserved_device_name,
    lookalike_character,
    path_problem,
    refused_character,
    safe_entry_names,
    safe_file_name,
    shown,
    validate_file_name,
)

BIDI = [
    "\u061c",
    "\u200e",
    "\u200f",
    *(chr(c) for c in range(0x202A, 0x202F)),
    *(chr(c) for c in range(0x2066, 0x206A)),
]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
CONTROLS = ["\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f"]
SURROGATES = ["\udcff", "\ud800", "\udfff"]
NON_CHARACTERS = ["\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff"]
OTHER_INVISIBLE = ["\u00ad", "\u2028", "\u2029", "\U000e0041"]
REFUSED = BIDI + ZERO_WIDTH + CONTROLS + SURROGATES + NON_CHARACTERS + OTHER_INVISIBLE


def problem_bytes(error: InvalidName) -> bytes:
    """The 400 body as the server encodes it: must never fail."""
    return json.dumps(error.to_problem("/files"), ensure_ascii=False).encode()


# -- file names ---------------------------------------------------------------------------


@pytest.mark.parametrize("char", REFUSED, ids=lambda c: f"U+{ord(c):04X}")
def test_file_names_refuse_disguising_characters_naming_the_code_point(char: str) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_file_name(f"invoice{char}fdp.exe")
    point = f"U+{ord(char):04X}"
    assert caught.value.extensions["code_point"] == point
    assert caught.value.extensions["position"] == 7
    assert point in caught.value.detail
    assert char not in caught.value.detail
    problem_bytes(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "photo.jpg",
        "ädmin.txt",
        "фото кота.jpg",
        "写真.png",
        "emoji 🎉.txt",
        "heart ❤️.txt",  # U+FE0F is a variation selector (Mn), not a format character
        "non\u00a0breaking.txt",
        "private\ue000use",
        "CON.txt",  # a download's name, not a path in an archive: browsers rename these
        "x" * NAME_MAX_BYTES,
        "arabic ٣.txt",
        "hebrew שלום.txt",
    ],
)
def test_file_names_that_are_plain_text_are_accepted(name: str) -> None:
    assert validate_file_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x" * (NAME_MAX_BYTES + 1)])
def test_file_names_keep_their_old_rules(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_file_name(name)


@given(st.text())
@example("a\udcffb")
@example("\u202e")
def test_any_file_name_is_accepted_or_refused_with_an_encodable_answer(name: str) -> None:
    try:
        assert validate_file_name(name) == name
    except InvalidName as error:
        problem_bytes(error)
        return
    assert refused_character(name) is None
    name.encode()


@given(st.text())
def test_safe_file_name_is_always_valid(name: str) -> None:
    assert validate_file_name(safe_file_name(name, "archive.zip"))


def test_shown_escapes_what_would_disguise_a_log_line_or_an_answer() -> None:
    assert shown("invoice\u202efdp.exe") == "invoice\\u202efdp.exe"
    assert shown("a\udcffb\nc") == "a\\udcffb\\x0ac"
    assert shown("plain é") == "plain é"


# -- paths inside an archive --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("C:/Windows/win.ini", "drive letter"),
        ("C:x", "drive letter"),
        ("c:", "drive letter"),
        ("CON", "reserved device name"),
        ("con", "reserved device name"),
        ("aux.txt", "reserved device name"),
        ("Aux.tar.gz", "reserved device name"),
        ("a/NUL.log", "reserved device name"),
        ("PRN", "reserved device name"),
        ("COM1", "reserved device name"),
        ("com9.txt", "reserved device name"),
        ("LPT1", "reserved device name"),
        ("lpt0", "reserved device name"),
        ("COM\u00b9", "reserved device name"),
        ("LPT\u00b3.txt", "reserved device name"),
        ("con .txt", "reserved device name"),
        ("CONIN$", "reserved device name"),
        ("ab:c", "':'"),
        ("a:b", "drive letter"),
        ("report.txt:hidden", "':'"),
        ("a/b::$DATA", "':'"),
        ("a./b", "dot or a space"),
        ("a/b.", "dot or a space"),
        ("a /b", "dot or a space"),
        ("b ", "dot or a space"),
        ("...", "dot or a space"),
        ("a?b", "'?'"),
        ("a*b", "'*'"),
        ('a"b', "'\"'"),
        ("a<b", "'<'"),
        ("a>b", "'>'"),
        ("a|b", "'|'"),
        ("a\\b", "'/' separators"),
        ("x" * (COMPONENT_MAX_BYTES + 1), "longer than 255"),
        ("invoice\u202efdp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("a\u200bb", "U+200B ZERO WIDTH SPACE"),
        ("a/\x85", "U+0085"),
        ("a\udcffb", "U+DCFF"),
        ("a\ufffeb", "U+FFFE"),
    ],
)
def test_paths_harmful_on_windows_or_macos_are_refused(path: str, reason: str) -> None:
    problem = path_problem(path)
    assert problem is not None
    assert reason in problem
    problem.encode()


@pytest.mark.parametrize(
    "path",
    [
        "CONSOLE.txt",
        "com10",
        "COM",
        "lpt",
        "auxiliary.txt",
        "nul_",
        "a.b.c",
        " leading space",
        ".hidden/.also",
        "día/café.txt",
        "x" * COMPONENT_MAX_BYTES,
        "a~1.txt",
    ],
)
def test_paths_safe_everywhere_are_accepted(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "name", ["CON", "con", "CoN.txt", "aux.tar.gz", "com1", "COM\u00b2", "lpt9 .x", "conout$"]
)
def test_reserved_device_names_any_case_and_extension(name: str) -> None:
    assert is_reserved_device_name(name)


@given(st.text())
def test_path_problem_never_raises(path: str) -> None:
    problem = path_problem(path)
    if problem is not None:
        problem.encode()


# -- compatibility look-alikes (NFKC, Windows best-fit: the WorstFit attacks) ---------------

LOOKALIKE_PATHS = [
    ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt", "U+FF0F", "'/'"),
    ("\u2025\uff0fevil.txt", "U+FF0F", "'/'"),
    ("\u2025/evil.txt", "U+2025", "'..'"),
    ("a/\uff0e", "U+FF0E", "'.'"),
    ("a\uff3cb", "U+FF3C", "'\\\\'"),
    ("C\uff1a\uff0fx", "U+FF1A", "':'"),
    ("\uff43\uff4f\uff4e", "U+FF43", "device name"),
    ("docs/\uff23\uff2f\uff2d\uff11.txt", "U+FF23", "device name"),
    ("c\u014dn.txt", "U+014D", "device name"),  # best-fit 1252 drops the macron
    ("..\u2215..\u2215evil", "U+2215", "'/'"),
    ("a\u2044b", "U+2044", "'/'"),
    ("a\u29f8b", "U+29F8", "'/'"),
    ("a\ufe68b", "U+FE68", "'\\\\'"),
    ("a\u2216b", "U+2216", "'\\\\'"),
    ("a\u00a5b", "U+00A5", "'\\\\'"),  # code page 932: the yen sign is the backslash
    ("a\ufe55b", "U+FE55", "':'"),
    ("a\ua789b", "U+A789", "':'"),
    ("a\u2100b", "U+2100", "'/'"),  # ACCOUNT OF: NFKC 'a/c'
    ("a\uff1fb", "U+FF1F", "'?'"),
    ("a\uff0ab", "U+FF0A", "'*'"),
    ("a\uff1cb", "U+FF1C", "'<'"),
    ("a\uff02b", "U+FF02", "'\"'"),
    ("a\uff5cb", "U+FF5C", "'|'"),
    ("notes\u2026", "U+2026", "dot or a space"),
    ("a\u3000/b", "U+3000", "dot or a space"),
]


@pytest.mark.parametrize(
    ("path", "point", "reason"), LOOKALIKE_PATHS, ids=[ascii(p) for p, _, _ in LOOKALIKE_PATHS]
)
def test_paths_that_read_as_harmful_after_nfkc_or_best_fit_are_refused(
    path: str, point: str, reason: str
) -> None:
    problem = path_problem(path)
    assert problem is not None
    assert point in problem
    assert reason in problem
    found = lookalike_character(path)
    assert found is not None
    assert found.code == point
    assert path[found.index] == found.char


@pytest.mark.parametrize(
    "path",
    [
        "caf\u00e9/d\u00eda.txt",
        "\u5199\u771f/\u65c5\u884c 2024.jpg",
        "\u30d5\u30a1\u30a4\u30eb\u3002txt",
        "emoji \U0001f389/\u2764\ufe0f.txt",
        "wait\u2026 what.txt",
        "\u00bd cup.txt",
        "\ufb01le.txt",  # the fi ligature reads as 'fi': harmless
        "\u0444\u043e\u0442\u043e/\u043a\u043e\u0442.png",
        "\uff41\uff42\uff43.txt",  # fullwidth letters that are no device name
        "C\u00f4ne.txt",
        "\uff0ehidden",
    ],
)
def test_ordinary_non_ascii_paths_are_accepted(path: str) -> None:
    assert path_problem(path) is None
    assert lookalike_character(path) is None


LOOKALIKE_ALPHABET = st.sampled_from(
    list("ab.c/ on\u00e9\u5199\u2026\u2025\u2024\uff0e\uff0f\uff3c\uff1a\uff43\uff4f\uff4e")
    + list("\u2215\u2044\u2216\ufe55\ufe68\u00a5\u3000\u2100\uff1f\u014d\u00bd")
)


@given(st.text(alphabet=LOOKALIKE_ALPHABET, max_size=12))
@example("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt")
@example("\u2025/evil")
def test_an_accepted_path_reads_as_an_accepted_path_after_nfkc(path: str) -> None:
    """Whatever NFKC makes of an accepted path has the same components, none of them `.`,
    `..`, a device name, ending with a dot or a space, or holding a Windows character."""
    if path_problem(path) is not None:
        return
    normal = unicodedata.normalize("NFKC", path)
    parts = normal.split("/")
    assert len(parts) == len(path.split("/"))
    for part in parts:
        assert part not in {"", ".", ".."}
        assert part[-1] not in ". "
        assert not is_reserved_device_name(part)
        assert not set(part) & set('\\:<>"|?*')


# -- collisions ---------------------------------------------------------------------------

NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")


@pytest.mark.parametrize(
    ("paths", "folder"),
    [
        (["README.TXT", "Readme.txt"], False),
        ([NFC, NFD], False),
        (["dir/" + NFC, "DIR/" + NFD.upper()], False),
        (["a", "A/b"], True),
        (["A/b/c", "a/B"], True),
        (["Straße", "STRASSE"], False),
    ],
)
def test_collisions_after_nfc_and_case_fold(paths: list[str], folder: bool) -> None:
    with pytest.raises(Collision) as caught:
        check_collisions(sorted(paths))
    assert caught.value.folder is folder


def test_folders_that_fold_alike_are_not_a_collision() -> None:
    check_collisions(["Docs/a.txt", "docs/b.txt", "ab", "a.b/c"])


def test_fold_is_canonical_caseless() -> None:
    assert fold(NFD) == fold(NFC.upper()) == fold(NFC)
    assert fold("ABC/Def") == "abc/def"


# -- making any set of entries safe ------------------------------------------------------

COMPONENT_ALPHABET = (
    "aA.: ?*<|\\bcCoOnN1\u00b9e\u0301é\u202e\u200b\udcff\x01\u2028\ufffe"
    "\uff0e\uff0f\u2025\u2026\uff3c\uff1a\uff43\uff4f\u014d\u2215\u00a5\u3000"
)
components = st.text(alphabet=COMPONENT_ALPHABET, max_size=8)
paths = st.lists(components, min_size=1, max_size=3).map("/".join)
entry_lists = st.lists(st.tuples(paths, st.booleans()), max_size=12, unique_by=lambda e: e[0])


def assert_safe(entries: list[tuple[str, bool]], names: list[str | None]) -> None:
    assert len(names) == len(entries)
    kept = [(name, is_dir) for name, (_, is_dir) in zip(names, entries, strict=True) if name]
    assert all(name is not None or is_dir for name, (_, is_dir) in zip(names, entries, strict=True))
    for name, _ in kept:
        assert path_problem(name) is None or "longer than" in (path_problem(name) or ""), name
    files = [name for name, is_dir in kept if not is_dir]
    check_collisions(files)
    dir_names = [name for name, is_dir in kept if is_dir]
    assert len(set(dir_names)) == len(dir_names)
    assert not {fold(f) for f in files} & {fold(d) for d in dir_names}


@given(entry_lists)
@example([("CON", False), ("con.txt", False), ("a:b", False), ("a_b", False)])
@example([("Readme.txt", False), ("README.TXT", False), ("readme (2).txt", False)])
@example([("a", False), ("A", True), ("A/b", False)])
@example([("a:b", True), ("a_b", True), ("a_b", False)])
@example([("x" * 300 + ".txt", False), ("x" * 300 + ".TXT", False)])
def test_safe_entry_names_follow_every_rule(entries: list[tuple[str, bool]]) -> None:
    assert_safe(entries, safe_entry_names(entries))


@given(st.lists(st.text(alphabet="abcXYZé. -_1", min_size=1, max_size=6), max_size=8))
def test_safe_entry_names_keep_names_that_follow_the_rules(parts: list[str]) -> None:
    candidates = [p for p in dict.fromkeys(parts) if path_problem(p) is None]
    try:
        check_collisions(candidates)
    except Collision:
        return
    entries = [(p, False) for p in candidates]
    assert safe_entry_names(entries) == candidates


def test_safe_entry_names_rename_lookalikes() -> None:
    entries = [
        ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt", False),
        ("\u2025/evil.txt", False),
        ("a\uff3cb", False),
        ("\uff43\uff4f\uff4e", False),
        ("..\u2215..\u2215evil", False),
        ("notes\u2026", False),
        ("caf\u00e9 \u5199\u771f \U0001f389.txt", False),
    ]
    assert safe_entry_names(entries) == [
        "\uff0e\uff0e_\uff0e\uff0e_evil.txt",
        "_/evil.txt",
        "a_b",
        "_\uff43\uff4f\uff4e",
        ".._.._evil",
        "notes_",
        "caf\u00e9 \u5199\u771f \U0001f389.txt",
    ]


def test_safe_entry_names_rename_rather_than_drop() -> None:
    entries = [
        ("CON.txt", False),
        ("Readme.txt", False),
        ("README.TXT", False),
        ("notes: v2.txt", False),
        ("a\udcffb.txt", False),
        ("trailing.", False),
    ]
    assert safe_entry_names(entries) == [
        "_CON.txt",
        "Readme.txt",
        "README (2).TXT",
        "notes_ v2.txt",
        "a_b.txt",
        "trailing_",
    ]
