"""Chromium through Playwright against pytest-django's live server.

Playwright's sync API runs an event loop in the test thread, which Django's async-safety check
takes for async code; the test thread only sets up and checks rows, so the check is turned off.
"""

import os

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# One Chromium for the whole run (tests/conftest.py): Playwright's sync API cannot start twice
# in one thread, so the browser and front-end tests share the session's.
from tests.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402, F401


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def log_in(page, live_server):
    """Logs a user in by typing into the login form and pressing Enter, then opens `next`."""

    def log_in(user, *, next: str = "/") -> None:
        page.goto(f"{live_server.url}/accounts/login/?next={next}")
        # The username field has autofocus: no click needed.
        page.keyboard.type(user.username)
        page.keyboard.press("Tab")
        page.keyboard.type("correct-horse-battery")
        page.keyboard.press("Enter")
        page.wait_for_url(f"{live_server.url}{next}")

    return log_in
