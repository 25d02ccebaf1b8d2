"""The OpenAPI schema documents every operation's error statuses in the error shape
(annotation/schema.py), and the docs page runs under the Content-Security-Policy."""

import pytest
from drf_spectacular.generators import SchemaGenerator

from annotation.schema import expected_error_statuses

pytestmark = pytest.mark.django_db
ERRORS = {"400", "401", "403", "404", "409", "411", "413", "415", "429"}


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema):
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_every_operation_documents_its_error_statuses_in_the_error_shape(schema):
    seen = 0
    for path, method, op in operations(schema):
        seen += 1
        codes = set(op["responses"])
        assert {"401", "403"} <= codes, (method, path, codes)
        params = {p["in"] for p in op.get("parameters", [])}
        if "requestBody" in op or params & {"query", "path"}:
            assert "400" in codes, (method, path)
        if "requestBody" in op:
            assert {"413", "415"} <= set(codes), (method, path)
        if "path" in params or "campaign" in {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}:
            assert "404" in codes, (method, path)
        error_ref = "#/components/schemas/" + ("OpenAIErrorOut" if path.startswith("/v1/") else "ErrorOut")
        for code in codes & ERRORS:
            content = op["responses"][code]["content"]["application/json"]["schema"]
            assert content == {"$ref": error_ref}, (method, path, code, content)
            assert op["responses"][code]["description"]
    assert seen >= 20
    body = schema["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"code", "message", "details"}


def test_conflicts_uploads_and_throttling_are_documented_where_they_happen(schema):
    paths = schema["paths"]
    for path in ("/api/campaigns/{slug}/next/", "/api/assignments/{assignment_id}/vote/", "/api/assignments/{assignment_id}/skip/"):
        assert "409" in paths[path]["post"]["responses"], path
    for path in ("/api/campaigns/{slug}/prompts/import/", "/api/campaigns/{slug}/preferences/import/"):
        assert {"411", "413"} <= set(paths[path]["post"]["responses"]), path
    assert "429" in paths["/v1/chat/completions"]["post"]["responses"]
    # No invented statuses: a read without parameters has no 400, 404, 409 or 429.
    assert set(paths["/api/campaigns/"]["get"]["responses"]) == {"200", "401", "403"}
    assert "429" not in paths["/api/campaigns/{slug}/"]["get"]["responses"]  # not throttled


def test_the_rules(schema):
    op = {"parameters": [{"in": "path", "name": "slug"}], "security": [{"tokenAuth": []}]}
    assert expected_error_statuses("/api/campaigns/{slug}/next/", "post", op, throttled=False) == {400, 401, 403, 404, 409}
    body = {"requestBody": {}, "security": [{"tokenAuth": []}]}
    assert expected_error_statuses("/api/campaigns/{slug}/prompts/import/", "post", body, throttled=False) == {400, 401, 403, 411, 413, 415}
    assert expected_error_statuses("/api/campaigns/", "get", {"security": [{}]}, throttled=True) == {403, 429}


def test_docs_page_loads_its_script_from_a_url_not_inline(admin_user):
    from django.test import Client

    c = Client()
    c.force_login(admin_user)
    r = c.get("/api/docs/")
    html = r.content.decode()
    assert r.status_code == 200 and "<style" not in html
    assert "script-src 'self'" in r["Content-Security-Policy"]
    assert "<script>" not in html and 'src="/api/docs/?script="' in html
    script = c.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in script.content
