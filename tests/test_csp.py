"""The Content-Security-Policy on every response, and templates that comply with it (no inline
script, event handler or style). The browser tests check that pages run under it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "annotation" / "templates"
STRICT = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def policy(response) -> dict:
    header = response["Content-Security-Policy"]
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in (p.strip() for p in header.split(";")) if d}


def logged_in(user):
    c = Client()
    c.force_login(user)
    return c


@pytest.mark.django_db
def test_every_kind_of_response_carries_the_strict_policy(campaign, comparisons, admin_user):
    c = logged_in(admin_user)
    responses = {
        "login page": Client().get("/accounts/login/"),
        "annotator page": c.get("/annotate/c1/"),
        "console": c.get("/console/c1/"),
        "api json": c.get("/api/campaigns/", HTTP_ACCEPT="application/json"),
        "api 404": c.get("/api/nope/"),
        "page 404": c.get("/nope/"),
        "nul 400": c.get("/api/votes/?campaign=%00"),
        "openai": c.get("/v1/models"),
        "docs": c.get("/api/docs/"),
        "admin": c.get("/admin/"),
    }
    for name, r in responses.items():
        assert policy(r) == STRICT, name


@pytest.mark.django_db
def test_only_the_browsable_api_may_use_inline_styles(admin_user):
    r = logged_in(admin_user).get("/api/campaigns/", HTTP_ACCEPT="text/html")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/html")
    assert policy(r) == {**STRICT, "style-src": "'self' 'unsafe-inline'"}


def test_image_hosts_come_from_the_environment():
    code = "import django; django.setup(); from django.conf import settings; import json; " \
           "print(json.dumps(settings.CONTENT_SECURITY_POLICY['DIRECTIVES']['img-src']))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
           "PREFLOOP_CSP_IMG_HOSTS": "https://img.example.org,https://cdn.example.com"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["'self'", "data:", "https://img.example.org", "https://cdn.example.com"]


def test_templates_have_no_inline_script_handler_or_style():
    found = []
    for path in sorted(TEMPLATES.rglob("*.html")):
        text = path.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)[^>]*>", r"\son[a-z]+\s*=", r"\sstyle\s*=", r"<style\b", r"javascript:"):
            found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text, re.IGNORECASE)]
    assert found == []


def test_htmx_injects_no_inline_style_on_console_pages():
    head = (TEMPLATES / "console" / "_head.html").read_text()
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", head)
    assert meta and json.loads(meta.group(1))["includeIndicatorStyles"] is False
