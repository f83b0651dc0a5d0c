"""The database the running test uses, for connections and processes built outside Django's own."""

from urllib.parse import quote

from django.db import connection


def this_test_database_url() -> str:
    """pytest-django's `test_` copy of the TEST_DATABASE_URL database, as a URL."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
