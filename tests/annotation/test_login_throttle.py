"""Failed logins are throttled per username and per client address, on the page and the API.

The page tests post to /accounts/login/, which must be served by annotation.auth.LoginView
(wired in webapp/urls.py), with the login template showing `form.throttled`.
"""

import time

import pytest
from rest_framework.test import APIClient

from annotation import auth
from annotation.models import ApiToken
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
TOKEN = "/api/v1/auth/token"


def api_login(username, password, address="10.0.0.1"):
    return APIClient(REMOTE_ADDR=address).post(
        TOKEN, {"username": username, "password": password}, format="json"
    )


def page_login(client, username, password, address="10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_the_api_refuses_after_ten_failures_even_the_right_password():
    user = UserFactory()
    for _ in range(auth.MAX_FAILURES_PER_USERNAME):
        assert api_login(user.username, "wrong").status_code == 400
    refused = api_login(user.username, PASSWORD)
    assert refused.status_code == 429
    assert refused.json()["detail"] == "too many failed logins; try again in 15 minutes"
    assert 14 * 60 < int(refused["Retry-After"]) <= 15 * 60
    assert not ApiToken.objects.exists()
    # Someone else, from the same address, is not affected.
    assert api_login(UserFactory().username, PASSWORD).status_code == 200


def test_the_window_ends(monkeypatch):
    user = UserFactory()
    for _ in range(auth.MAX_FAILURES_PER_USERNAME):
        api_login(user.username, "wrong")
    assert api_login(user.username, PASSWORD).status_code == 429
    later = time.time() + auth.WINDOW_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert api_login(user.username, PASSWORD).status_code == 200


def test_a_successful_login_is_unaffected_and_clears_the_username_count():
    user = UserFactory()
    for _ in range(auth.MAX_FAILURES_PER_USERNAME - 1):
        assert api_login(user.username, "wrong").status_code == 400
    assert api_login(user.username, PASSWORD).status_code == 200
    for _ in range(auth.MAX_FAILURES_PER_USERNAME - 1):
        assert api_login(user.username, "wrong").status_code == 400
    assert api_login(user.username, PASSWORD).status_code == 200


def test_one_address_guessing_many_usernames_is_refused():
    users = [UserFactory() for _ in range(6)]
    for i in range(auth.MAX_FAILURES_PER_ADDRESS):
        assert api_login(users[i % 6].username, "wrong", "10.9.9.9").status_code in (400, 429)
    fresh = UserFactory()
    assert api_login(fresh.username, PASSWORD, "10.9.9.9").status_code == 429
    # The same user from another address gets in.
    assert api_login(fresh.username, PASSWORD, "10.1.1.1").status_code == 200


def test_the_page_shows_the_refusal_inline_and_does_not_log_in(client):
    user = UserFactory()
    for _ in range(auth.MAX_FAILURES_PER_USERNAME):
        response = page_login(client, user.username, "wrong")
        assert response.status_code == 200 and "didn't match" in response.content.decode()
    refused = page_login(client, user.username, PASSWORD)
    html = refused.content.decode()
    assert refused.status_code == 429
    assert "too many failed logins; try again in 15 minutes" in html
    assert 'role="alert"' in html and 'name="password"' in html  # inline, on the form
    assert "_auth_user_id" not in client.session


def test_the_page_logs_in_under_the_limit(client):
    user = UserFactory()
    page_login(client, user.username, "wrong")
    response = page_login(client, user.username, PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_page_and_api_share_the_count(client):
    user = UserFactory()
    half = auth.MAX_FAILURES_PER_USERNAME // 2
    for _ in range(half):
        page_login(client, user.username, "wrong")
    for _ in range(auth.MAX_FAILURES_PER_USERNAME - half):
        api_login(user.username, "wrong")
    assert api_login(user.username, PASSWORD).status_code == 429
    assert page_login(client, user.username, PASSWORD).status_code == 429
