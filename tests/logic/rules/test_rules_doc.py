"""docs/rules.md lists every rule-set setting with its TOML field name."""
from pathlib import Path

import msgspec
import pytest

from streams.logic.rules.ruleset import RuleSet

DOC = (Path(__file__).parents[3] / "docs" / "rules.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in msgspec.structs.fields(RuleSet)])
def test_every_setting_is_documented(name: str) -> None:
    assert f"| `{name}` |" in DOC, f"docs/rules.md 'Every setting' lacks a row for `{name}`"
