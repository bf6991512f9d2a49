"""Bundle manifests: validation and the canonical, order-independent id."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filecask.archives.manifest import DEFAULT_NAME, PATH_MAX_BYTES, parse_manifest, path_problem
from filecask.errors import BadRequest

H1, H2, H3 = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))


def body(*entries: tuple[str, str], name: str = "set.zip") -> dict[str, Any]:
    return {"name": name, "files": [{"path": p, "hash": h} for p, h in entries]}


def test_id_is_sha256_of_canonical_manifest() -> None:
    manifest = parse_manifest(body(("b", H2), ("a", H1)))
    canonical = json.dumps(
        {"files": [{"hash": H1, "path": "a"}, {"hash": H2, "path": "b"}], "name": "set.zip"},
        separators=(",", ":"),
    )
    assert manifest.id == hashlib.sha256(canonical.encode()).hexdigest()
    assert manifest.entries == [("a", H1), ("b", H2)]
    assert manifest.name == "set.zip"


def test_id_does_not_depend_on_entry_order() -> None:
    forward = parse_manifest(body(("a", H1), ("d/b", H2), ("c", H3)))
    backward = parse_manifest(body(("c", H3), ("d/b", H2), ("a", H1)))
    assert forward.id == backward.id
    assert forward.entries == backward.entries


def test_id_depends_on_name_paths_and_hashes() -> None:
    base = parse_manifest(body(("a", H1)))
    assert parse_manifest(body(("a", H1), name="other.zip")).id != base.id
    assert parse_manifest(body(("b", H1))).id != base.id
    assert parse_manifest(body(("a", H2))).id != base.id


def test_uppercase_hash_is_normalised_to_the_same_id() -> None:
    assert parse_manifest(body(("a", H1.upper()))).id == parse_manifest(body(("a", H1))).id


def test_missing_name_defaults() -> None:
    assert parse_manifest({"files": [{"path": "a", "hash": H1}]}).name == DEFAULT_NAME


def test_unicode_names_and_paths_keep_their_characters() -> None:
    manifest = parse_manifest(body(("фото/кот.jpg", H1), name="отпуск.zip"))
    assert manifest.entries == [("фото/кот.jpg", H1)]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "is empty"),
        ("/abs", "must be relative"),
        ("a\\b", "must be relative"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("x" * (PATH_MAX_BYTES + 1), "longer than"),
        ("é" * (PATH_MAX_BYTES // 2 + 1), "longer than"),
    ],
)
def test_path_problem_names_the_reason(path: str, problem: str) -> None:
    found = path_problem(path)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    "path", ["a", "a/b/c.txt", ".hidden", "a..b", "/".join(["x" * 204] * 5), "ф/ё"]
)
def test_path_problem_accepts_plain_relative_paths(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"files": "nope"},
        {"files": []},
        {},
        {"files": [["a", H1]]},
        {"files": [{"path": "a"}]},
        {"files": [{"path": "a", "hash": "xyz"}]},
        {"files": [{"path": 3, "hash": H1}]},
        {"files": [{"path": "a/../b", "hash": H1}]},
        {"files": [{"path": "a", "hash": H1}, {"path": "a", "hash": H2}]},
        {"files": [{"path": "a/b", "hash": H1}, {"path": "a", "hash": H2}]},
        {"files": [{"path": "a/b/c", "hash": H1}, {"path": "a", "hash": H2}]},
        {"name": 5, "files": [{"path": "a", "hash": H1}]},
        {"name": "a/b", "files": [{"path": "a", "hash": H1}]},
        {"name": "", "files": [{"path": "a", "hash": H1}]},
    ],
)
def test_invalid_manifests_are_bad_requests(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_manifest(bad)


def test_bad_entry_is_named_by_its_index() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body(("ok", H1), ("/abs", H2)))
    assert "files[1]" in caught.value.detail
    assert caught.value.extensions["entry"] == 1


def test_file_and_folder_clash_names_the_parent() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body(("a", H1), ("a/b", H2)))
    assert caught.value.extensions["path"] == "a"


def test_sibling_prefix_is_not_a_clash() -> None:
    manifest = parse_manifest(body(("a", H1), ("ab/c", H2), ("a.d/e", H3)))
    assert [p for p, _ in manifest.entries] == ["a", "a.d/e", "ab/c"]


# -- issue 14: names and paths that are safe on every client ---------------------------------


def problem_bytes(error: BadRequest) -> bytes:
    """The 400 body as the server encodes it: must never fail."""
    return json.dumps(error.to_problem("/archives"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("path", "point"),
    [
        ("invoice\u202efdp.exe", "U+202E"),
        ("a\u2066b", "U+2066"),
        ("a/\u200fb", "U+200F"),
        ("zero\u200bwidth", "U+200B"),
        ("bom\ufeff", "U+FEFF"),
        ("c1\x9b", "U+009B"),
        ("a\udcffb", "U+DCFF"),
    ],
)
def test_disguising_characters_in_paths_are_refused_naming_the_code_point(
    path: str, point: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body(("ok", H1), (path, H2)))
    error = caught.value
    assert error.extensions["code_point"] == point
    assert error.extensions["entry"] == 1
    assert point in error.detail
    assert path not in error.detail
    problem_bytes(error)


def test_a_lone_surrogate_in_the_bundle_name_is_a_400_that_encodes() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body(("a", H1), name="x\udcff.zip"))
    assert caught.value.extensions["code_point"] == "U+DCFF"
    problem_bytes(caught.value)


@pytest.mark.parametrize(
    "path", ["C:/x", "C:x", "CON", "aux.txt", "a/COM1.log", "LPT\u00b9", "a:stream", "a./b", "b "]
)
def test_paths_harmful_on_windows_are_refused(path: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body((path, H1)))
    assert caught.value.extensions["entry"] == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Readme.txt", "README.TXT"),
        ("caf\u00e9.txt", "cafe\u0301.txt"),
        ("a", "A/b"),
        ("A", "a/b/c"),
    ],
)
def test_entries_that_collide_after_nfc_and_case_fold_are_refused(first: str, second: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest(body((first, H1), (second, H2)))
    error = caught.value
    assert {error.extensions["path"], error.extensions["conflicts_with"]} <= {
        first,
        second,
        *(second.split("/")[:1]),
    }
    assert "Windows and macOS" in error.detail or "both a file and a folder" in error.detail
    problem_bytes(error)


def test_folders_that_differ_in_case_only_are_accepted() -> None:
    manifest = parse_manifest(body(("Docs/a", H1), ("docs/b", H2)))
    assert [p for p, _ in manifest.entries] == ["Docs/a", "docs/b"]


json_text = st.text() | st.sampled_from(["CON", "a:b", "\udcff", "\u202e", "a/../b", "x. "])


@given(st.lists(st.tuples(json_text, st.sampled_from([H1, H2, H3])), min_size=1, max_size=5))
def test_any_manifest_is_accepted_or_a_400_that_encodes(
    entries: list[tuple[str, str]],
) -> None:
    try:
        manifest = parse_manifest(body(*entries))
    except BadRequest as error:
        problem_bytes(error)
        return
    for path, _ in manifest.entries:
        assert path_problem(path) is None
