"""The documentation: docs/settings.md documents every setting, the README names the
commands it promises (which exist) and links to every page of docs/, and every relative link
in the README, ARCHITECTURE.md and docs/ leads to a file (and heading) that exists."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from filecask.settings import SETTINGS, Setting

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *PAGES]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_settings_page_documents_setting(setting: Setting) -> None:
    assert f"`{setting.env}`" in SETTINGS_DOC
    if not setting.secret:
        assert f"`{setting.flag}`" in SETTINGS_DOC
    assert setting.help in SETTINGS_DOC


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    for script in ("scripts/serve", "scripts/test", "scripts/help-time"):
        assert f"{script}" in README
        assert os.access(ROOT / script, os.X_OK)
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_readme_links_to_docs_page(page: Path) -> None:
    assert f"](docs/{page.name})" in README


def test_readme_stays_a_front_door() -> None:
    assert len(README.splitlines()) < 200
    assert "](ARCHITECTURE.md)" in README


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file: lower case, punctuation
    dropped, spaces as hyphens, `-1`, `-2`... for repeats."""
    found: set[str] = set()
    for line in prose(path.read_text()):
        heading = re.match(r"#{1,6} +(.*?) *#*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in found:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        found.add(anchor)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for line in prose(path.read_text())
        for target in LINK.findall(line)
        if not re.match(r"[a-z]+:", target)
    ]


def resolves(document: Path, target: str) -> bool:
    file_part, _, anchor = target.partition("#")
    linked = (document.parent / file_part).resolve() if file_part else document
    if not linked.exists():
        return False
    return not anchor or linked.suffix != ".md" or anchor in anchors(linked)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document: Path) -> None:
    assert document.exists()
    assert [t for t in relative_links(document) if not resolves(document, t)] == []


def test_link_checker_sees_links_and_anchors() -> None:
    """The check above is not vacuous: the README has relative links, with anchors among
    them, and the slugs are GitHub's."""
    assert len(relative_links(ROOT / "README.md")) >= len(PAGES)
    security = anchors(ROOT / "docs" / "security.md")
    assert {"who-may-read-metrics", "names-and-archives", "sign-in"} <= security
