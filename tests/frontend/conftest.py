"""Chromium through Playwright, for pages of the front end driven on their own (see harness/)."""

import os

import pytest

from tests.factories import PASSWORD

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def harness():
    from tests.frontend.harness.server import Harness

    server = Harness()
    yield server
    server.close()


@pytest.fixture
def page(chromium):
    """A page at 1280×800 that fails the test on any CSP violation or script error."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" or "Content Security Policy" in message.text
            else None
        ),
    )
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture
def live_page(chromium):
    """A page for the live server at 1280×800 (the annotate page's own frame and CSP)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture
def log_in(live_page, live_server):
    """Logs a user in through the login form, then opens `next`."""

    def log_in(user, *, next: str = "/") -> None:
        live_page.goto(f"{live_server.url}/accounts/login/?next={next}")
        live_page.keyboard.type(user.username)
        live_page.keyboard.press("Tab")
        live_page.keyboard.type(PASSWORD)
        live_page.keyboard.press("Enter")
        live_page.wait_for_url(f"{live_server.url}{next}")

    return log_in
