"""Bundle manifests: validation and the canonical, order-independent id."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from filecask.bundles import DEFAULT_NAME, PATH_MAX_BYTES, parse_manifest, path_problem
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


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", ".hidden", "a..b", "x" * PATH_MAX_BYTES, "ф/ё"])
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
