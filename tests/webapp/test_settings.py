"""Safe by default: production settings unless development is asked for, and the headers they send.

Settings modules are read once per process, so everything about production runs in a subprocess
with a bare environment; the headers every environment shares are checked in-process.
"""

import json
import os
import re
import secrets
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.test import override_settings

REPO = Path(__file__).resolve().parents[2]
MISSING_SECRET = "SECRET_KEY is not set"


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No DJANGO_SETTINGS_MODULE, no secret, no hosts: what `docker run` or a fresh shell has."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "TANDEM_VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "ERROR",
    }
    env.update(extra)
    return env


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    required = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "tandem.example.org,testserver",
    }
    return bare_env(tmp_path, **{**required, **extra})


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


# How each entry point loads its settings, then prints which module and DEBUG it got.
REPORT = (
    "from django.conf import settings; import json, os;"
    "print('RESULT ' + json.dumps([os.environ['DJANGO_SETTINGS_MODULE'], settings.DEBUG]))"
)
ENTRY_POINTS = {
    "manage.py": ["manage.py", "shell", "-c", REPORT],
    "wsgi": ["-c", "import webapp.wsgi;" + REPORT],
    "asgi": ["-c", "import webapp.asgi;" + REPORT],
    "celery": ["-c", "from webapp.celery import app; app.conf.broker_url;" + REPORT],
}


def result_line(out: str):
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_points_default_to_production(tmp_path, entry):
    # Nothing set: refuses to start, saying what is missing, instead of serving debug pages.
    refused = run(ENTRY_POINTS[entry], bare_env(tmp_path))
    assert refused.returncode != 0
    assert MISSING_SECRET in refused.stderr
    assert "RESULT" not in refused.stdout
    assert not (tmp_path / "var" / "secret_key").exists()  # no dev key was made up either

    # Secret and hosts given: production, DEBUG off.
    started = run(ENTRY_POINTS[entry], production_env(tmp_path))
    assert started.returncode == 0, started.stderr[-2000:]
    assert result_line(started.stdout) == ["webapp.settings.production", False]


def test_production_names_the_missing_hosts(tmp_path):
    env = bare_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50))
    refused = run(ENTRY_POINTS["wsgi"], env)
    assert refused.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS is not set" in refused.stderr


@pytest.mark.slow
def test_check_deploy_security_checks_pass_for_production(tmp_path):
    result = run(
        ["manage.py", "check", "--deploy", "--tag", "security", "--fail-level", "WARNING"],
        production_env(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.slow
def test_check_deploy_passes_for_production(tmp_path):
    # Every deploy check, drf-spectacular's schema check included: no warning at all.
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stderr


def test_check_deploy_warns_about_a_weak_secret(tmp_path):
    # The check is live: the same run with a short key fails.
    env = production_env(tmp_path, SECRET_KEY="short")
    result = run(["manage.py", "check", "--deploy", "--tag", "security"], env)
    assert "security.W009" in result.stderr


# In a production process: HSTS, the https redirect, the proxy header, the JSON-only API.
PRODUCTION_REQUESTS = r"""
import json
import django
django.setup()
from django.test import Client, override_settings
# Plain static storage: the manifest only exists after the image's collectstatic.
override_settings(STORAGES={
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}).enable()
c = Client()
out = {}
r = c.get("/accounts/login/", secure=True)
out["https"] = [r.status_code, r.headers.get("Strict-Transport-Security")]
r = c.get("/accounts/login/")
out["http"] = [r.status_code, r.headers.get("Location"), r.headers.get("Strict-Transport-Security")]
r = c.get("/accounts/login/", headers={"X-Forwarded-Proto": "https"})
out["proxied"] = [r.status_code, r.headers.get("Strict-Transport-Security")]
r = c.get("/api/v1/projects", secure=True, headers={"Accept": "text/html,*/*;q=0.8"})
out["api_html"] = [r.status_code, r.headers.get("Content-Type"), r.headers.get("Content-Security-Policy")]
r = c.get("/no/such/page", secure=True)
out["404"] = [r.status_code, r.content.decode()]
from django.conf import settings
out["cookies"] = [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_production_sends_hsts_and_redirects_to_https(tmp_path):
    env = production_env(tmp_path, DJANGO_SETTINGS_MODULE="webapp.settings.production")
    result = run(["-c", PRODUCTION_REQUESTS], env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result_line(result.stdout)

    assert out["https"] == [200, "max-age=31536000; includeSubDomains; preload"]
    assert out["http"][0] == 301 and out["http"][1].startswith("https://")
    assert out["http"][2] is None  # HSTS only over https
    # Without DJANGO_BEHIND_TLS_PROXY anyone could claim https with a header: not believed.
    assert out["proxied"] == [301, None]
    assert out["cookies"] == [True, True]
    # The browsable API is off: HTML asked for, JSON given.
    status, content_type, csp = out["api_html"]
    assert status == 401 and content_type.startswith("application/json")
    assert "script-src 'self'" in csp
    # Our own 404 page, not Django's debug page with every URL pattern.
    status, body = out["404"]
    assert status == 404
    assert "Page not found" in body
    assert "URLconf" not in body and "api/v1/" not in body


@pytest.mark.slow
def test_behind_a_tls_proxy_the_forwarded_scheme_counts(tmp_path):
    env = production_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="webapp.settings.production",
        DJANGO_BEHIND_TLS_PROXY="1",
        DJANGO_HSTS_SECONDS="600",
        DJANGO_HSTS_PRELOAD="0",
    )
    result = run(["-c", PRODUCTION_REQUESTS], env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result_line(result.stdout)
    assert out["proxied"] == [200, "max-age=600; includeSubDomains"]
    assert out["http"][0] == 301


@pytest.mark.slow
def test_plain_http_try_turns_off_redirect_and_secure_cookies(tmp_path):
    env = production_env(
        tmp_path, DJANGO_SETTINGS_MODULE="webapp.settings.production", DJANGO_SECURE_COOKIES="0"
    )
    result = run(["-c", PRODUCTION_REQUESTS], env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result_line(result.stdout)
    assert out["http"] == [200, None, None]
    assert out["cookies"] == [False, False]


DEMO_REQUESTS = r"""
import json
import django
django.setup()
from django.conf import settings
from django.test import Client
c = Client(SERVER_NAME="127.0.0.1")
r = c.get("/no/such/page")
css = c.get("/static/tandem/tandem.css")
print("RESULT " + json.dumps({
    "debug": settings.DEBUG, "404": [r.status_code, r.content.decode()],
    "css": css.status_code, "secure": [settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE],
}))
"""


@pytest.mark.slow
def test_demo_settings_have_debug_off_and_serve_static_without_collectstatic(tmp_path):
    env = bare_env(tmp_path, DJANGO_SETTINGS_MODULE="webapp.settings.demo")
    result = run(["-c", DEMO_REQUESTS], env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result_line(result.stdout)
    assert out["debug"] is False
    status, body = out["404"]
    assert status == 404 and "Page not found" in body and "URLconf" not in body
    assert out["css"] == 200
    assert out["secure"] == [False, False]
    # The per-checkout random key, readable by its owner only.
    key = tmp_path / "var" / "secret_key"
    assert len(key.read_text().strip()) >= 50
    assert key.stat().st_mode & 0o077 == 0


# --- Headers every environment sends (checked in this process, on the test settings) ---------

CSP_EXPECTED = {
    "default-src": {"'self'"},
    "script-src": {"'self'"},
    "img-src": {"'self'", "data:"},
    "object-src": {"'none'"},
    "base-uri": {"'none'"},
    "frame-ancestors": {"'none'"},
    "form-action": {"'self'"},
}


def parse_csp(header: str) -> dict[str, set[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = set(values)
    return directives


def assert_security_headers(response) -> None:
    csp = parse_csp(response.headers["Content-Security-Policy"])
    for name, values in CSP_EXPECTED.items():
        assert csp[name] == values, name
    # Styles from our files, plus at most a third-party page's fixed <style> blocks by hash.
    assert "'self'" in csp["style-src"]
    assert all(v == "'self'" or v.startswith("'sha256-") for v in csp["style-src"])
    assert not any("unsafe" in v for values in csp.values() for v in values)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in ("same-origin", "strict-origin-when-cross-origin")
    assert response.headers["X-Frame-Options"] == "DENY"


def test_security_headers_on_a_page(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert_security_headers(response)


@pytest.mark.django_db
def test_security_headers_on_an_api_response(client):
    response = client.get("/api/v1/projects")
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert_security_headers(response)


@pytest.mark.django_db
def test_api_renders_json_only_without_debug(api, cast):
    response = api(cast.manager).get("/api/v1/projects", HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert response.status_code == 200
    # JSON, or a refusal: never the browsable API's HTML forms.
    assert "text/html" not in response.headers["Content-Type"]
    assert b"<form" not in response.content


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        self._in_script = tag == "script" and not attrs.get("src")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag):
        self._in_script = False


# The docs' assets come from the sidecar's static files, found as `make demo` finds them.
@pytest.mark.django_db
@override_settings(WHITENOISE_USE_FINDERS=True)
def test_api_docs_load_everything_from_this_server(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert_security_headers(response)
    page = _Assets()
    page.feed(response.content.decode())
    # No inline script for the CSP to block: the init script has a URL of its own.
    assert page.inline_scripts == []
    assert len(page.urls) >= 4  # css, bundle, preset, init script (+ favicon)
    for url in page.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # same origin: no CDN
        asset = client.get(url)
        assert asset.status_code == 200, url
        asset.close()
    init = client.get(next(u for u in page.urls if "script" in urlsplit(u).query))
    assert init.headers["Content-Type"].startswith("application/javascript")
    body = init.content.decode()
    assert "/api/schema/" in body
    # Swagger UI's validator badge would send the schema to validator.swagger.io.
    assert re.search(r'"validatorUrl":\s*null', body)
    assert not re.search(r"https?://", body.replace("http://testserver", ""))


# --- Our own error pages ------------------------------------------------------------------------

ERROR_PAGES = {
    "400.html": "Bad request",
    "403.html": "Access denied",
    "403_csrf.html": "Your form has expired",
    "404.html": "Page not found",
    "500.html": "Something went wrong",
}


@pytest.mark.parametrize("template", sorted(ERROR_PAGES))
def test_error_pages_render_without_a_request(template):
    from django.template.loader import render_to_string

    # server_error renders with no request and no context processors: no user, no csrf token.
    html = render_to_string(template)
    assert ERROR_PAGES[template] in html
    assert "/static/tandem/tandem.css" in html  # styled like every other page


def test_unknown_url_gets_our_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Page not found" in html and "/static/tandem/tandem.css" in html
    assert "URLconf" not in html and "api/v1/" not in html
    assert_security_headers(response)


def test_server_error_page(rf):
    from django.views.defaults import server_error

    response = server_error(rf.get("/"))
    assert response.status_code == 500
    assert "Something went wrong" in response.content.decode()


@pytest.mark.django_db
def test_csrf_failure_gets_our_page():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post(
        "/accounts/login/", {"username": "a", "password": "b"}
    )
    assert response.status_code == 403
    assert "Your form has expired" in response.content.decode()
