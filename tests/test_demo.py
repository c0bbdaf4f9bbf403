"""The decision tour of `gateway demo` tells the truth about the shipped policies."""

from __future__ import annotations

import re

import pytest

from gateway.cli import main


def test_tour_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    outcomes = re.findall(r"-> (ALLOW|DENY) (\d{3})", capsys.readouterr().out)
    assert outcomes == [
        ("ALLOW", "200"), ("ALLOW", "200"), ("DENY", "451"), ("DENY", "404"), ("DENY", "404"), ("ALLOW", "200"),
        ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "403"),
    ]


def test_tour_commands_reproduce_each_decision(capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo"])
    tour = capsys.readouterr().out
    for outcome, command in re.findall(r"-> (\w+ \d{3}).*\n\s+\$ gateway (.+)", tour):
        assert main([*command.split(), "--json"]) == 0
        explained = capsys.readouterr().out
        assert f'"status": {outcome.split()[1]}' in explained
