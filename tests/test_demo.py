"""The decision tour of `gateway demo` tells the truth about the shipped policies."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.cli import main


def test_tour_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tour"]) == 0
    outcomes = re.findall(r"-> (ALLOW|DENY) (\d{3})", capsys.readouterr().out)
    assert outcomes == [
        ("ALLOW", "200"), ("ALLOW", "200"), ("DENY", "451"), ("DENY", "404"), ("DENY", "404"), ("ALLOW", "200"),
        ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "451"), ("DENY", "451"),
        ("DENY", "451"), ("DENY", "403"),
    ]


def test_tour_commands_reproduce_each_decision(capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo", "--tour"])
    tour = capsys.readouterr().out
    for outcome, command in re.findall(r"-> (\w+ \d{3}).*\n\s+\$ gateway (.+)", tour):
        assert main([*command.split(), "--json"]) == 0
        explained = capsys.readouterr().out
        assert f'"status": {outcome.split()[1]}' in explained


def test_demo_examples_answer_as_printed(tmp_path) -> None:
    import asyncio

    from gateway.demo.command import check, describe, start_demo

    async def run() -> tuple[str, list[tuple[int, int]]]:
        runtime = await start_demo(tmp_path, public_port=0, admin_port=0)
        try:
            results = await check(runtime)
            return describe(runtime), [(example.expect, status) for example, status in results]
        finally:
            await runtime.stop()

    text, results = asyncio.run(run())
    assert len(results) == 8 and all(expect == status for expect, status in results), results
    assert {expect for expect, _ in results} == {200, 403, 404, 451}
    assert "curl" in text and "IP Geolocation by DB-IP" in text and "from openai import OpenAI" in text


def test_demo_prints_the_console_and_its_tokens_and_they_sign_in(tmp_path) -> None:
    import asyncio

    from gateway.demo.command import check_console, describe, start_demo

    async def run() -> tuple[str, list[tuple[str, bool]], Any]:
        runtime = await start_demo(tmp_path, public_port=0, admin_port=0)
        try:
            return describe(runtime), await check_console(runtime), runtime
        finally:
            await runtime.stop()

    text, signed_in, runtime = asyncio.run(run())
    assert f"{runtime.admin_url}/console/" in text
    for token in (*runtime.operators.values(), runtime.viewer):
        assert token in text
    assert len(signed_in) == 3 and all(ok for _, ok in signed_in), signed_in


def test_demo_walks_through_change_control_with_two_operator_tokens(tmp_path) -> None:
    import asyncio

    from gateway.demo.command import check_walkthrough, describe, start_demo

    async def run() -> tuple[str, dict[str, str], list[tuple[str, bool]]]:
        runtime = await start_demo(tmp_path, public_port=0, admin_port=0)
        try:
            text = describe(runtime)
            return text, runtime.operators, await check_walkthrough(runtime)
        finally:
            await runtime.stop()

    text, operators, steps = asyncio.run(run())
    alice, bob = operators["ops-alice"], operators["ops-bob"]
    assert f"ALICE={alice}" in text and f"BOB={bob}" in text and alice != bob
    suspend, lift, approve = (text.index(f"{step}. ") for step in "abc")
    assert suspend < lift < approve
    assert "GATEWAY_ADMIN_TOKEN=$ALICE gateway admin suspend --id demo-jp" in text[suspend:lift]
    assert "GATEWAY_ADMIN_TOKEN=$ALICE gateway admin lift demo-jp" in text[lift:approve]
    assert "GATEWAY_ADMIN_TOKEN=$BOB gateway admin approve PROPOSAL_ID" in text[approve:]
    # And it is true: done through the admin API, each step answers as printed.
    assert steps == [("a. suspend at once", True), ("b. lift is a proposal", True),
                     ("c. approved by the second operator", True)]
