"""The console in a real browser: Debian's headless Chromium driven by Playwright.

- `console_stack`: a real gateway (tests/e2e.py Stack: demo upstream, public and admin
  listeners on loopback ports) with an operator, a second operator and a viewer token.
- `browser` (one per test module) and `page` (a fresh context per test, 1280x800): a page
  never shares cookies with another test's.
- `sign_in(page, stack, token)`: signs in through the form, as a person would.
- `screenshot(page, name)`: saves tests/artifacts/screenshots/<name>.png (git-ignored).

Playwright's own browsers are never downloaded (`playwright install` cannot run here):
the tests launch /usr/bin/chromium, which the Makefile installs with apt-get when missing.
Without it (or without playwright) these tests are skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import Stack

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
OPERATOR, SECOND_OPERATOR, VIEWER = "console-operator-token", "console-second-operator-token", "console-viewer-token"
ACTORS = {OPERATOR: "ops-alice", SECOND_OPERATOR: "ops-carol", VIEWER: "auditor-bob"}


ROLES = {OPERATOR: "operator", SECOND_OPERATOR: "operator", VIEWER: "viewer"}


def console_config(*, approvals: int = 1, session_ttl: str = "8h", extra: str = "",
                   tokens: tuple[str, ...] = (OPERATOR, SECOND_OPERATOR, VIEWER), jwt_role_claim: str = "null") -> str:
    """Admin tokens for the console: two operators (a change and its approval) and a viewer
    (`tokens`: fewer of them, as after one is removed from the configuration)."""
    digest = lambda token: hashlib.sha256(token.encode()).hexdigest()  # noqa: E731
    listed = "\n".join(f'    - {{name: {ACTORS[t]}, sha256: "{digest(t)}", role: {ROLES[t]}}}' for t in tokens)
    return f"""change_control: {{approvals: {approvals}}}
console: {{session_ttl_s: {session_ttl}, jwt_role_claim: {jwt_role_claim}}}
admin:
  tokens:
{listed}
{extra}"""


def make_console_stack(directory: Path, **kwargs: Any) -> Stack:
    config = {k: kwargs.pop(k) for k in ("approvals", "session_ttl", "extra", "tokens", "jwt_role_claim") if k in kwargs}
    return Stack(directory, extra_config=console_config(**config), **kwargs)


@pytest.fixture
def console_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = make_console_stack(tmp_path)
    try:
        yield stack
    finally:
        stack.close()


# One browser per test module, not per session: while Playwright's sync API is open, the
# main thread counts as running an event loop, and later tests' asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (pip install -e '.[dev]')")
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test installs it as root)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=WIDE)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """More pages, each in a context of its own (another person's browser): `new_page()`."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = WIDE) -> Any:
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    try:
        yield make
    finally:
        for context in contexts:
            context.close()


def sign_in(page: Any, stack: Stack, token: str = OPERATOR, *, then: str = "/console/") -> None:
    """Sign in through the form and land on `then` (a console path)."""
    page.goto(stack.admin_url + then)
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.admin_url + then)


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
