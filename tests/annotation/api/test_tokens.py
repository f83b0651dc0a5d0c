"""API tokens: stored as digests, expiring, listed and revoked by their owner, dead after a
password change, and checked with one query and no write per request."""

from datetime import timedelta

import pytest
from django.contrib.auth import views as auth_views
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from rest_framework.test import APIClient, APIRequestFactory

from annotation import services
from annotation.api.authentication import TokenAuthentication
from annotation.models import ApiToken
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

# This module is also the URLconf of the password-change test: the API plus Django's own view.
urlpatterns = [
    path("api/v1/", include(("annotation.api.urls", "api"), namespace="api")),
    path(
        "password_change/",
        auth_views.PasswordChangeView.as_view(success_url="/done/"),
        name="password_change",
    ),
]


def obtain(username, password=PASSWORD, **extra):
    return APIClient().post(
        "/api/v1/auth/token", {"username": username, "password": password, **extra}, format="json"
    )


def client_with(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


def works(secret) -> bool:
    code = client_with(secret).get("/api/v1/projects").status_code
    assert code in (200, 401)
    return code == 200


def test_the_database_holds_no_plaintext_secret():
    user = UserFactory()
    response = obtain(user.username, name="laptop")
    assert response.status_code == 200
    body = response.json()
    secret = body["token"]
    assert len(secret) == 64 and body["name"] == "laptop" and secret.startswith(body["id"])
    assert body["expiry"] is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(t)::text FROM annotation_apitoken t")
        rows = [r[0] for r in cursor.fetchall()]
    assert len(rows) == 1
    assert secret not in rows[0] and secret[15:40] not in rows[0]
    token = ApiToken.objects.get()
    assert token.digest != secret and token.token_key == secret[:15] and token.name == "laptop"
    assert works(secret)


def test_an_expired_token_is_refused_and_not_deleted_on_the_request_path():
    user = UserFactory()
    secret = obtain(user.username).json()["token"]
    ApiToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        assert not works(secret)
    assert ApiToken.objects.count() == 1  # refused without a write; the sweep removes it
    assert not any(
        q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))
        for q in queries.captured_queries
    )


def test_the_sweep_deletes_expired_tokens_only():
    user = UserFactory()
    live = obtain(user.username).json()["token"]
    dead = obtain(user.username).json()["token"]
    ApiToken.objects.filter(token_key=dead[:15]).update(expiry=timezone.now() - timedelta(1))
    assert services.token_sweep() == 1
    assert list(ApiToken.objects.values_list("token_key", flat=True)) == [live[:15]]
    assert works(live)


def test_a_password_change_revokes_every_older_token():
    user = UserFactory()
    secret = obtain(user.username).json()["token"]
    assert works(secret)
    user.set_password("another-long-passphrase")
    user.save()
    assert not works(secret)
    fresh = obtain(user.username, "another-long-passphrase").json()["token"]
    assert works(fresh)


@pytest.mark.urls(__name__)
def test_a_password_change_through_djangos_view_revokes_tokens(client):
    user = UserFactory()
    secret = obtain(user.username).json()["token"]
    client.force_login(user)
    response = client.post(
        "/password_change/",
        {
            "old_password": PASSWORD,
            "new_password1": "a-brand-new-passphrase",
            "new_password2": "a-brand-new-passphrase",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/done/"
    assert not works(secret)


def test_listing_shows_only_own_live_tokens_and_never_a_secret(api):
    alice, bob = UserFactory(), UserFactory()
    mine = obtain(alice.username, name="ci").json()["token"]
    obtain(bob.username, name="bobs")
    expired = obtain(alice.username, name="old").json()["token"]
    ApiToken.objects.filter(token_key=expired[:15]).update(expiry=timezone.now() - timedelta(1))
    response = client_with(mine).get("/api/v1/auth/tokens")
    assert response.status_code == 200
    listed = response.json()
    assert [(t["id"], t["name"]) for t in listed] == [(mine[:15], "ci")]
    assert set(listed[0]) == {"id", "name", "created", "expiry"}
    assert mine not in response.content.decode()
    assert api().get("/api/v1/auth/tokens").status_code == 401


def test_revoking_own_token_and_not_anyone_elses():
    alice, bob = UserFactory(), UserFactory()
    alices = obtain(alice.username).json()["token"]
    second = obtain(alice.username).json()["token"]
    bobs = obtain(bob.username).json()["token"]
    # Bob's token looks absent to Alice, and survives her attempt.
    assert client_with(alices).delete(f"/api/v1/auth/tokens/{bobs[:15]}").status_code == 404
    assert works(bobs)
    assert client_with(alices).delete(f"/api/v1/auth/tokens/{second[:15]}").status_code == 204
    assert not works(second) and works(alices)
    assert client_with(alices).delete(f"/api/v1/auth/tokens/{second[:15]}").status_code == 404
    assert APIClient().delete(f"/api/v1/auth/tokens/{alices[:15]}").status_code == 401


def test_authentication_is_one_query_and_no_write():
    user = UserFactory()
    secret = obtain(user.username).json()["token"]
    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {secret}")
    with CaptureQueriesContext(connection) as queries:
        authenticated, token = TokenAuthentication().authenticate(request)
    assert authenticated.pk == user.pk and token.user_id == user.pk
    assert len(queries.captured_queries) == 1
    assert queries.captured_queries[0]["sql"].lstrip().upper().startswith("SELECT")
    # And over a whole request: reads only.
    with CaptureQueriesContext(connection) as queries:
        assert works(secret)
    assert not any(
        q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))
        for q in queries.captured_queries
    )


def test_a_deactivated_user_is_refused():
    user = UserFactory()
    secret = obtain(user.username).json()["token"]
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert not works(secret)
