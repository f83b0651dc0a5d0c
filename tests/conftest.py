import os
import shutil

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Role
from annotation.services.tokens import token_issue
from tests.factories import ProjectFactory, UserFactory, import_tasks


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle and failed-login counters live in the cache: no test inherits another's."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api():
    """Returns a factory of API clients: api(user) is authenticated by token, api() is anonymous."""

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            _, secret = token_issue(user=user, name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client

    return make


@pytest.fixture
def cast(db):
    """A pairwise project with ten tasks and one user in every role, plus an outsider and a
    former annotator who was removed from the project."""
    manager = UserFactory(is_staff=False)
    project = ProjectFactory(creator=UserFactory(is_staff=True))
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    annotator, other, trainer, outsider = UserFactory(), UserFactory(), UserFactory(), UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    services.membership_set(project=project, username=other.username, role=Role.ANNOTATOR)
    services.membership_set(project=project, username=trainer.username, role=Role.TRAINER)
    removed = UserFactory()
    services.membership_set(project=project, username=removed.username, role=Role.ANNOTATOR)
    services.membership_remove(project=project, username=removed.username)
    import_tasks(project, 10)

    class Cast:
        pass

    c = Cast()
    c.project, c.manager, c.annotator, c.other, c.trainer, c.outsider = (
        project,
        manager,
        annotator,
        other,
        trainer,
        outsider,
    )
    c.removed = removed
    return c


CHROMIUM = os.environ.get("TANDEM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# Session-wide and defined once, here: Playwright's sync API cannot be started twice in one
# thread, and the browser tests (tests/browser) and the front-end tests (tests/frontend) both
# drive Chromium.
@pytest.fixture(scope="session")
def chromium():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()
