"""Folder archives below the HTTP layer: names, walking, and the CRC cache."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from filecask.archives.plans import (
    FOLDER_NAME_MAX,
    Archive,
    DirectoryFile,
    FolderPlans,
    Found,
    directory_archive,
    validate_folder_name,
)
from filecask.archives.zipplan import DataSlice, HeaderBytes, ZipPlan
from filecask.errors import BadRequest, NotFound
from filecask.services import Services
from filecask.settings import Settings
from filecask.storage.meta import CachedCrc


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "/etc",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\x7f",
        "x" * 256,
        "é" * 128,
    ],
)
def test_validate_folder_name_refuses(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_folder_name(name)


@pytest.mark.parametrize(
    "name", ["photos", "a.b", "a..b", "with space", "фото", "x" * FOLDER_NAME_MAX, "0" * 64]
)
def test_validate_folder_name_accepts(name: str) -> None:
    assert validate_folder_name(name) == name


def render(plan: ZipPlan) -> bytes:
    """The plan's header bytes plus the members' data, read by test code."""
    out = io.BytesIO()
    for segment in plan.segments(0, plan.size):
        if isinstance(segment, HeaderBytes):
            out.write(segment.data)
            continue
        assert isinstance(segment, DataSlice)
        source = segment.member.source
        assert isinstance(source, DirectoryFile)
        with open(source.path, "rb") as handle:
            handle.seek(segment.offset)
            out.write(handle.read(segment.length))
    return out.getvalue()


def tree(settings: Settings, name: str) -> Path:
    root = settings.archives_dir / name
    (root / "sub").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top")
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    return root


async def test_symlink_loop_inside_root_terminates(settings: Settings, services: Services) -> None:
    root = tree(settings, "loop")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    archive = await directory_archive(settings.archives_dir, "loop", services.meta)
    names = [m.name for m in archive.plan.members]
    assert "top.txt" in names
    assert "sub/inner.txt" in names or "self/inner.txt" in names
    assert len(names) <= 4
    assert not any(n.startswith("sub/back") for n in names)


async def test_missing_and_root_level_names_are_not_found(
    settings: Settings, services: Services
) -> None:
    settings.archives_dir.mkdir(parents=True, exist_ok=True)
    with pytest.raises(NotFound):
        await directory_archive(settings.archives_dir, "absent", services.meta)
    (settings.archives_dir / "file.txt").write_bytes(b"not a folder")
    with pytest.raises(NotFound):
        await directory_archive(settings.archives_dir, "file.txt", services.meta)


async def test_same_tree_gives_same_bytes_and_etag(settings: Settings, services: Services) -> None:
    tree(settings, "same")
    first = await directory_archive(settings.archives_dir, "same", services.meta)
    second = await directory_archive(settings.archives_dir, "same", services.meta)
    assert first.etag == second.etag
    assert render(first.plan) == render(second.plan)
    assert zipfile.ZipFile(io.BytesIO(render(first.plan))).testzip() is None


async def test_crcs_are_cached_after_the_first_archive(
    settings: Settings, services: Services
) -> None:
    root = tree(settings, "cached")
    paths = [os.path.realpath(root / "top.txt"), os.path.realpath(root / "sub" / "inner.txt")]
    assert await services.meta.get_crcs(paths) == {}
    await directory_archive(settings.archives_dir, "cached", services.meta)
    rows = await services.meta.get_crcs(paths)
    assert rows[paths[0]].crc32 == zlib.crc32(b"top")
    assert rows[paths[1]].crc32 == zlib.crc32(b"inner")


async def test_second_archive_uses_the_cached_crc(settings: Settings, services: Services) -> None:
    """A planted cache row with matching size/mtime/inode is trusted: the file is not reread."""
    root = tree(settings, "planted")
    await directory_archive(settings.archives_dir, "planted", services.meta)
    path = os.path.realpath(root / "top.txt")
    row = (await services.meta.get_crcs([path]))[path]
    await services.meta.put_crcs([CachedCrc(path, row.size, row.mtime_ns, row.inode, 12345)])
    archive = await directory_archive(settings.archives_dir, "planted", services.meta)
    member = next(m for m in archive.plan.members if m.name == "top.txt")
    assert member.crc32 == 12345


async def test_same_size_new_content_with_new_mtime_gets_a_new_crc(
    settings: Settings, services: Services
) -> None:
    root = tree(settings, "changed")
    first = await directory_archive(settings.archives_dir, "changed", services.meta)
    target = root / "top.txt"
    target.write_bytes(b"TOP")
    info = target.stat()
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 3_000_000_000))
    second = await directory_archive(settings.archives_dir, "changed", services.meta)
    member = next(m for m in second.plan.members if m.name == "top.txt")
    assert member.crc32 == zlib.crc32(b"TOP")
    assert second.etag != first.etag
    path = os.path.realpath(target)
    assert (await services.meta.get_crcs([path]))[path].crc32 == zlib.crc32(b"TOP")
    assert zipfile.ZipFile(io.BytesIO(render(second.plan))).testzip() is None


# the plans of recent folders


async def test_an_unchanged_folder_reuses_its_plan(settings: Settings, services: Services) -> None:
    tree(settings, "kept")
    plans = FolderPlans()
    first = await directory_archive(settings.archives_dir, "kept", services.meta, plans)
    assert await directory_archive(settings.archives_dir, "kept", services.meta, plans) is first


@pytest.mark.parametrize("change", ["rewrite", "touch", "add", "remove", "chmod", "rename"])
async def test_any_change_to_a_folder_makes_a_new_plan(
    settings: Settings, services: Services, change: str
) -> None:
    root = tree(settings, "changing")
    plans = FolderPlans()
    first = await directory_archive(settings.archives_dir, "changing", services.meta, plans)
    top = root / "top.txt"
    if change == "rewrite":
        top.write_bytes(b"a new, longer content")
    elif change == "touch":
        stamp = top.stat().st_mtime_ns + 5_000_000_000
        os.utime(top, ns=(stamp, stamp))
    elif change == "add":
        (root / "sub" / "new.txt").write_bytes(b"new")
    elif change == "remove":
        (root / "sub" / "inner.txt").unlink()
    elif change == "chmod":
        top.chmod(0o600)
    else:
        top.rename(root / "renamed.txt")
    second = await directory_archive(settings.archives_dir, "changing", services.meta, plans)
    assert second is not first
    assert second.etag != first.etag
    archive = zipfile.ZipFile(io.BytesIO(render(second.plan)))
    assert archive.testzip() is None
    expected = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {n for n in archive.namelist() if not n.endswith("/")} == expected


def test_plans_are_bounded_by_their_entries() -> None:
    plans = FolderPlans(max_members=3)
    archive = empty_archive()
    walk: list[Found] = [("a", "/x/a", 0o100644, 1, 0.0, 0, 1)] * 2
    plans.put("one", walk, archive)
    plans.put("two", walk, archive)  # four entries in all: "one" goes
    assert plans.get("one", walk) is None
    assert plans.get("two", walk) is archive
    plans.put("huge", walk * 2, archive)  # larger than the whole budget: not kept
    assert plans.get("huge", walk * 2) is None
    assert plans.get("two", walk) is archive


def empty_archive() -> Archive:
    return Archive(ZipPlan([]), "x.zip", '"x"', None)


@pytest.mark.parametrize("moment", ["before-stat", "before-open"])
async def test_a_folder_swapped_for_a_symlink_mid_walk_never_leads_outside(
    settings: Settings,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    """Someone with write access to the archive root replaces a sub-folder with a symlink to
    a folder outside it, between the listing and the descent (the race is forced by
    swapping at the named moment of the walk)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"TOP SECRET")
    root = settings.archives_dir / "raced"
    (root / "x").mkdir(parents=True)
    (root / "x" / "inner.txt").write_bytes(b"inner")
    (root / "top.txt").write_bytes(b"top")
    hooked_name = "stat" if moment == "before-stat" else "open"
    hooked = getattr(os, hooked_name)
    swapped = False

    def swap_then(*args: Any, **kwargs: Any) -> Any:
        nonlocal swapped
        if args and args[0] == "x" and not swapped:
            swapped = True
            (root / "x" / "inner.txt").unlink()
            (root / "x").rmdir()
            (root / "x").symlink_to(outside, target_is_directory=True)
        return hooked(*args, **kwargs)

    monkeypatch.setattr(os, hooked_name, swap_then)
    archive = await directory_archive(settings.archives_dir, "raced", services.meta)
    monkeypatch.undo()
    assert swapped
    names = [m.name for m in archive.plan.members]
    assert "top.txt" in names
    assert not any("secret" in n for n in names), names
    assert b"TOP SECRET" not in render(archive.plan)


# issue 14: an archive holds only what lies under its own folder


def published(archive: Archive) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(render(archive.plan))) as opened:
        return {n: opened.read(n) for n in opened.namelist() if not n.endswith("/")}


def linked_root(settings: Settings) -> Path:
    """`pub` with links to the root, another folder, a dot-folder and a file elsewhere;
    `alias` (a top-level link to `pub`) and `hidden-alias` (to `.private`)."""
    base = settings.archives_dir
    for name, data in {
        "pub/p.txt": b"public",
        "pub/sub/s.txt": b"sub",
        "private/secret.txt": b"private",
        ".private/hidden.txt": b"hidden",
    }.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    pub = base / "pub"
    (pub / "rootlink").symlink_to(base, target_is_directory=True)
    (pub / "otherlink").symlink_to(base / "private", target_is_directory=True)
    (pub / "hiddenlink").symlink_to(base / ".private", target_is_directory=True)
    (pub / "filelink.txt").symlink_to(base / "private" / "secret.txt")
    (pub / "sub-link.txt").symlink_to(pub / "sub" / "s.txt")
    (base / "alias").symlink_to(pub, target_is_directory=True)
    (base / "hidden-alias").symlink_to(base / ".private", target_is_directory=True)
    (base / "deep-alias").symlink_to(base / ".private", target_is_directory=True)
    return base


async def test_links_to_other_folders_of_the_root_publish_nothing(
    settings: Settings, services: Services
) -> None:
    linked_root(settings)
    archive = await directory_archive(settings.archives_dir, "pub", services.meta)
    assert published(archive) == {
        "p.txt": b"public",
        "sub/s.txt": b"sub",
        "sub-link.txt": b"sub",  # a link within the folder itself is fine
    }


async def test_a_top_level_link_serves_its_target_folder_but_never_a_dot_folder(
    settings: Settings, services: Services
) -> None:
    linked_root(settings)
    alias = await directory_archive(settings.archives_dir, "alias", services.meta)
    assert published(alias)["p.txt"] == b"public"
    for name in ("hidden-alias", "deep-alias"):
        with pytest.raises(NotFound):
            await directory_archive(settings.archives_dir, name, services.meta)


async def test_left_out_links_are_logged_once_per_folder_and_cache_entry(
    settings: Settings, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    linked_root(settings)
    plans = FolderPlans()
    with caplog.at_level("WARNING", logger="filecask.archives"):
        for _ in range(5):
            await directory_archive(settings.archives_dir, "pub", services.meta, plans)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1, lines
        assert "left out 4 symlink(s)" in lines[0]
        (settings.archives_dir / "pub" / "new.txt").write_bytes(b"new")  # a new cache entry
        await directory_archive(settings.archives_dir, "pub", services.meta, plans)
        await directory_archive(settings.archives_dir, "pub", services.meta, plans)
        assert len(caplog.records) == 1  # the same links are left out: nothing new to say
        (settings.archives_dir / "pub" / "more").symlink_to(settings.archives_dir)
        await directory_archive(settings.archives_dir, "pub", services.meta, plans)
        await directory_archive(settings.archives_dir, "pub", services.meta, plans)
    assert len(caplog.records) == 2
    assert "left out 5 symlink(s)" in caplog.records[1].getMessage()


async def test_names_unsafe_on_some_client_are_renamed_not_dropped(
    settings: Settings, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    root = settings.archives_dir / "names"
    root.mkdir(parents=True)
    files = {
        b"a\xffb.txt": b"not utf-8",
        b"CON.txt": b"device",
        b"notes: v2.txt": b"colon",
        b"Readme.txt": b"one",
        b"README.TXT": b"two",
        b"invoice\xe2\x80\xaefdp.exe": b"bidi",
    }
    for name, data in files.items():
        with open(os.path.join(os.fsencode(root), name), "wb") as handle:
            handle.write(data)
    plans = FolderPlans()
    with caplog.at_level("WARNING", logger="filecask.archives"):
        archive = await directory_archive(settings.archives_dir, "names", services.meta, plans)
        await directory_archive(settings.archives_dir, "names", services.meta, plans)
    assert published(archive) == {
        "README.TXT": b"two",
        "Readme (2).txt": b"one",
        "_CON.txt": b"device",
        "a_b.txt": b"not utf-8",
        "invoice_fdp.exe": b"bidi",
        "notes_ v2.txt": b"colon",
    }
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "renamed 5 entries" in message
    assert "\u202e" not in message
    assert "\udcff" not in message


async def test_links_and_renames_of_one_folder_are_each_logged_once(
    settings: Settings, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    root = settings.archives_dir / "both"
    root.mkdir(parents=True)
    (root / "CON.txt").write_bytes(b"device")
    (root / "up").symlink_to(settings.archives_dir, target_is_directory=True)
    plans = FolderPlans()
    with caplog.at_level("WARNING", logger="filecask.archives"):
        for _ in range(5):
            archive = await directory_archive(settings.archives_dir, "both", services.meta, plans)
    assert published(archive) == {"_CON.txt": b"device"}
    messages = sorted(r.getMessage() for r in caplog.records)
    assert len(messages) == 2, messages
    assert "left out 1 symlink(s)" in messages[0]
    assert "renamed 1 entry" in messages[1]
