"""Every command a user can type is documented in docs/operations.md (or docs/hub.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.cli import _parser

REPO = Path(__file__).resolve().parent.parent


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_every_agent_command_is_documented() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    commands = _subcommands(_parser())
    assert {"run", "status", "apply", "selftest"} <= set(commands)
    missing = [c for c in commands if f"edge-agent {c}" not in docs]
    assert missing == [], f"undocumented edge-agent commands: {missing}"


def test_every_edgectl_command_is_documented() -> None:
    from hub.edgectl import _parser as ctl_parser

    docs = (REPO / "docs" / "hub.md").read_text()
    missing = [c for c in _subcommands(ctl_parser()) if f"  {c}" not in docs]
    assert missing == [], f"undocumented edgectl commands: {missing}"
