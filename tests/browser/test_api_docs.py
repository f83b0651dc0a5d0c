"""/api/docs/ in Chromium: Swagger UI renders every operation offline, under the CSP, from here."""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_works_offline_under_the_csp(live_server, page):
    requests, console = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    # Anything bound elsewhere fails at once instead of waiting on a network that may be absent.
    page.route(lambda url: not url.startswith(live_server.url), lambda route: route.abort())

    response = page.goto(f"{live_server.url}/api/docs/")
    assert response.status == 200
    page.wait_for_selector(".opblock")
    page.wait_for_load_state("networkidle")

    assert page.locator(".opblock").count() >= 10  # the schema loaded and rendered
    outside = [u for u in requests if not u.startswith(live_server.url)]
    assert outside == []
    assert not [m for m in console if "Content Security Policy" in m], console
