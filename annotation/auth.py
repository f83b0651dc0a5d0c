"""Signing in: failed logins are throttled per username and per client address, on the page and
the API alike.

The counters live in the cache (shared across web processes when the cache is Redis): a fixed
window that opens with the first failure. Once a username or an address has too many failures in
the window, every attempt is refused before the password is even checked, until the window ends.
A successful login clears its username's counter, never the address's (an attacker could
otherwise reset it by signing in to an account of their own between guesses).
"""

import hashlib
import math
import time
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest

WINDOW_SECONDS = getattr(settings, "TANDEM_LOGIN_FAILURE_WINDOW", 15 * 60)
MAX_FAILURES_PER_USERNAME = getattr(settings, "TANDEM_LOGIN_FAILURES_PER_USERNAME", 10)
# Higher: one office or campus may sit behind one address.
MAX_FAILURES_PER_ADDRESS = getattr(settings, "TANDEM_LOGIN_FAILURES_PER_ADDRESS", 50)


@dataclass(frozen=True)
class LoginRefused:
    retry_after: int  # seconds

    @property
    def message(self) -> str:
        minutes = max(1, math.ceil(self.retry_after / 60))
        unit = "minute" if minutes == 1 else "minutes"
        return f"too many failed logins; try again in {minutes} {unit}"


def client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR only: a forwarded-for header is whatever the client wants it to be unless a
    # trusted proxy rewrote it, and the proxy setup is the operator's to configure.
    return request.META.get("REMOTE_ADDR") or "unknown"


def _keys(*, username: str, address: str) -> list[tuple[str, int]]:
    # Hashed: usernames are arbitrary text and cache keys are not.
    name = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [
        (f"tandem:login-fail:user:{name}", MAX_FAILURES_PER_USERNAME),
        (f"tandem:login-fail:addr:{address}", MAX_FAILURES_PER_ADDRESS),
    ]


def login_refused(*, username: str, address: str) -> LoginRefused | None:
    """Why this attempt is refused without checking the password, or None to go ahead."""
    now = time.time()
    for key, limit in _keys(username=username, address=address):
        window = cache.get_many([key, f"{key}:since"])
        if window.get(key, 0) >= limit:
            since = window.get(f"{key}:since", now)
            return LoginRefused(retry_after=max(1, int(since + WINDOW_SECONDS - now)))
    return None


def login_failed(*, username: str, address: str) -> None:
    now = time.time()
    for key, _ in _keys(username=username, address=address):
        # add() only opens a window that is not already open; incr() is atomic in Redis and locmem.
        cache.add(f"{key}:since", now, timeout=WINDOW_SECONDS)
        cache.add(key, 0, timeout=WINDOW_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # the window closed between add() and incr()
            cache.set(key, 1, timeout=WINDOW_SECONDS)


def login_succeeded(*, username: str) -> None:
    key, _ = _keys(username=username, address="")[0]
    cache.delete_many([key, f"{key}:since"])


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": "%(message)s",
    }
    throttled = ""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        address = client_address(self.request) if self.request else "unknown"
        refused = login_refused(username=username, address=address)
        if refused is not None:
            # The page template shows this instead of its "didn't match" line.
            self.throttled = refused.message
            raise forms.ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"message": refused.message},
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError as exc:
            if username and getattr(exc, "code", None) == "invalid_login":
                login_failed(username=username, address=address)
            raise
        login_succeeded(username=username)
        return cleaned


class LoginView(auth_views.LoginView):
    """Django's login page with failed logins throttled; the refusal shows inline on the form."""

    form_class = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error(forms.forms.NON_FIELD_ERRORS, "throttled"):
            response.status_code = 429
        return response
