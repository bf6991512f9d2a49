"""The README documents every setting, and the commands it promises exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filecask.settings import SETTINGS

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_readme_documents_setting(setting: object) -> None:
    from filecask.settings import Setting

    assert isinstance(setting, Setting)
    assert f"`{setting.env}`" in README
    if not setting.secret:
        assert f"`{setting.flag}`" in README
    assert setting.help in README


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    for script in ("scripts/serve", "scripts/test"):
        assert f"{script}" in README
        assert os.access(ROOT / script, os.X_OK)
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
