"""The database settings keep one slow query or a database restart from taking a worker down."""

import os
import time

import pytest
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.db.utils import ConnectionHandler

from tests.webapp.testdb import this_test_database_url
from webapp.settings.base import database_from_env

pytestmark = pytest.mark.django_db


def connect(config: dict):
    """A connection wrapper built from a settings entry, exactly as Django builds its own."""
    return ConnectionHandler({"default": config})["default"]


def production_config(monkeypatch, **env: str) -> dict:
    """The settings entry production derives from its environment, pointed at the test database."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DB_CONN_MAX_AGE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return database_from_env(this_test_database_url())


def test_a_new_connection_from_settings_has_the_configured_statement_timeout():
    configured = int(os.environ.get("TANDEM_DB_STATEMENT_TIMEOUT_MS", "60000"))
    fresh = connections.create_connection("default")
    try:
        with fresh.cursor() as cursor:
            cursor.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
            assert cursor.fetchone() == (str(configured),)
    finally:
        fresh.close()
    assert configured > 0


def test_a_query_longer_than_the_timeout_is_cancelled_not_left_hanging(monkeypatch):
    probe = connect(production_config(monkeypatch, TANDEM_DB_STATEMENT_TIMEOUT_MS="300"))
    try:
        with probe.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("300ms",)
            started = time.monotonic()
            with pytest.raises(OperationalError, match="statement timeout"):
                cursor.execute("SELECT pg_sleep(10)")
            assert time.monotonic() - started < 5
        # Only the statement was cancelled: the connection goes on serving.
        with probe.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        probe.close()


def backend_pid(wrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def kill_backend(pid: int) -> None:
    """What a database restart does to a pooled connection: its server process goes away."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # Statistics views are read once per transaction unless the snapshot is dropped.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() == (0,):
                return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} still running")


@pytest.mark.parametrize("health_checks", [True, False])
def test_a_persistent_connection_whose_server_went_away_is_replaced(monkeypatch, health_checks):
    config = production_config(monkeypatch)
    assert config["CONN_HEALTH_CHECKS"] is True and config["CONN_MAX_AGE"] > 0
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True
    # The control run switches the checks off, to show they are what saves the next request.
    probe = connect({**config, "CONN_HEALTH_CHECKS": health_checks})
    try:
        first = backend_pid(probe)
        kill_backend(first)
        # What Django does when the next request starts (the request_started signal).
        probe.close_if_unusable_or_obsolete()
        if health_checks:
            assert backend_pid(probe) != first
        else:
            with pytest.raises(OperationalError):
                backend_pid(probe)
    finally:
        probe.close()
