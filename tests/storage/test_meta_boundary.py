"""The metadata store is used through its interface (`filecask.storage.meta.MetaStore`):
nothing in `src/filecask` outside `storage/meta` reaches for its SQLAlchemy engine."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "filecask"
META = PACKAGE / "storage" / "meta"
ENGINE_NAMES = {"engine", "_engine", "sync_engine"}


def engine_uses(path: Path, root: Path) -> list[str]:
    """`x.engine` (and `_engine`, `sync_engine`), and `getattr(x, "engine")`, in one file
    (shown relative to `root`), in line order."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ENGINE_NAMES:
            found.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in ENGINE_NAMES
        ):
            found.append((node.lineno, str(node.args[1].value)))
    return [f"{path.relative_to(root)}:{line}: .{name}" for line, name in sorted(found)]


def test_nothing_outside_storage_meta_touches_the_engine() -> None:
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if META not in p.parents]
    assert len(outside) > 20  # the walk sees the package
    uses = [use for path in outside for use in engine_uses(path, PACKAGE.parent)]
    assert uses == []


def test_the_walk_finds_an_engine_use(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "async def count(meta):\n"
        "    async with meta.engine.connect() as conn:\n"
        "        return getattr(meta, 'engine')\n"
    )
    assert engine_uses(sample, tmp_path) == ["sample.py:2: .engine", "sample.py:3: .engine"]
