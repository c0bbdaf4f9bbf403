"""The console across a fleet: replicas sharing one Redis behind any load balancer. A session
made on one replica works on every other, signing out on one ends it everywhere, a token
removed from a replica's configuration ends its sessions there, and the overview lists every
replica with its policy version."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.conftest import OPERATOR, SECOND_OPERATOR, VIEWER, make_console_stack, screenshot, sign_in
from e2e import CN_IP, Stack
from test_admin import chat


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    namespace = f"console-{uuid.uuid4().hex[:8]}"
    made: list[Stack] = []

    def replica(name: str, **kwargs: Any) -> Stack:
        directory = tmp_path / name
        directory.mkdir()
        extra = f"redis: {{url: '{redis_url}', namespace: {namespace}}}\naudit: {{path: audit.jsonl, replica: {name}}}"
        made.append(make_console_stack(directory, extra=extra, **kwargs))
        return made[-1]

    def stop(stack: Stack) -> None:
        made.remove(stack)
        stack.close()

    replica.stop = stop  # type: ignore[attr-defined]
    try:
        yield replica
    finally:
        for stack in made:
            stack.close()


def test_a_session_works_on_every_replica_and_sign_out_ends_it_everywhere(page: Any, replicas: Any) -> None:
    a, b = replicas("gw-a"), replicas("gw-b")
    sign_in(page, a, OPERATOR)
    page.goto(b.admin_url + "/console/")  # another replica, as a load balancer may send the next request
    assert "ops-alice" in page.locator("header").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.goto(a.admin_url + "/console/")
    assert "/console/sign-in" in page.url


def test_removing_a_token_from_the_configuration_ends_its_sessions(page: Any, new_page: Any, replicas: Any) -> None:
    a = replicas("gw-a")
    without_alice = replicas("gw-b", tokens=(SECOND_OPERATOR, VIEWER))  # alice's token removed here
    sign_in(page, a, OPERATOR)
    page.goto(without_alice.admin_url + "/console/")
    assert "/console/sign-in" in page.url
    carol = new_page()
    sign_in(carol, a, SECOND_OPERATOR)
    carol.goto(without_alice.admin_url + "/console/")
    assert "ops-carol" in carol.locator("header").inner_text()  # other tokens' sessions carry on


def test_the_overview_lists_every_replica_and_adds_up_their_denials(page: Any, replicas: Any) -> None:
    a, b = replicas("gw-a"), replicas("gw-b")
    for _ in range(2):
        chat(a, "org-acme", "frontier-5.6", CN_IP)
    chat(b, "org-acme", "frontier-5.6", CN_IP)
    b.thread.run(b.service.heartbeats.publish())  # rather than wait for the next beat
    a.thread.run(a.service.heartbeats.publish())
    sign_in(page, a, VIEWER)
    replicas_table = page.locator("#replicas").inner_text()
    version = a.service.state.policy.version
    assert "gw-a (this one)" in replicas_table and "gw-b" in replicas_table and replicas_table.count(version) == 2
    assert "every live replica runs it" in page.locator("#agreement").inner_text()
    assert page.locator("#map-CN").get_attribute("data-denials") == "3"
    assert page.locator("#redis-state").inner_text().startswith("reachable")
    screenshot(page, "overview-fleet")


def test_a_replica_stopped_on_purpose_leaves_the_overview(page: Any, replicas: Any) -> None:
    a, b = replicas("gw-a"), replicas("gw-b")
    sign_in(page, a, VIEWER)
    assert "gw-b" in page.locator("#replicas").inner_text()
    replicas.stop(b)
    page.reload()
    assert "gw-b" not in page.locator("#replicas").inner_text()

