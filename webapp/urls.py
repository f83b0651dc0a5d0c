import base64
import hashlib
import re

from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.template.loader import get_template
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from annotation.auth import LoginView


def _inline_style_hashes(template_name: str) -> list[str]:
    """CSP hashes of a third-party template's fixed <style> blocks: those and nothing else run."""
    source = get_template(template_name).template.source
    blocks = re.findall(r"<style>(.*?)</style>", source, re.S)
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return [f"'sha256-{d}'" for d in digests]


# The split view serves Swagger UI's init script from its own URL (?script), so the page needs no
# inline script under the CSP; the UI itself comes from the sidecar's static files. Its template's
# few layout rules are allowed by hash, not by 'unsafe-inline'.
api_docs = csp_update({"style-src": _inline_style_hashes("drf_spectacular/swagger_ui.html")})(
    SpectacularSwaggerSplitView.as_view(url_name="schema")
)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(("annotation.api.urls", "api"), namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include(("annotation.urls", "annotation"), namespace="annotation")),
]
