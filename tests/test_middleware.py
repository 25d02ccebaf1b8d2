"""Hostile requests answered before any view: NUL characters anywhere a request carries text
(annotation/middleware.py) and unknown paths under /api/ and /v1/ (the 404 handler), each in the
error shape of its prefix; pages get plain 400 / 404 pages."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import GuidelineVersion, Preference, Prompt, Vote
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def api_error(r, status=400, code="invalid"):
    assert r.status_code == status, r.content
    assert r["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]


def openai_error(r, status=400):
    assert r.status_code == status, r.content
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


def lease(client, slug="c1") -> int:
    r = client.post(f"/api/campaigns/{slug}/next/")
    assert r.status_code == 200, r.content
    return r.json()["assignment"]["id"]


# ---------------------------------------------------------------- NUL characters


def test_nul_in_a_query_value_is_bad_input_not_a_server_error(api, campaign, annotator):
    err = api_error(api(annotator).get("/api/votes/?campaign=%00"))
    assert "NUL" in err["message"] and err["details"] == {"where": "query", "field": "campaign"}
    err = api_error(api(annotator).get("/api/votes/?x%00y=1"))
    assert err["details"]["where"] == "query"


def test_nul_in_the_path_is_bad_input(api, campaign, annotator):
    err = api_error(api(annotator).get("/api/campaigns/c1%00/"))
    assert err["details"] == {"where": "path"}
    r = Client().get("/annotate/c1%00/")
    assert r.status_code == 400 and not r["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("text", ["a\u0000b", "\u0000"])
def test_nul_in_a_json_body_writes_nothing(api, campaign, comparisons, admin_user, text):
    c = api(admin_user)  # admins may annotate in every campaign
    assignment = lease(c)
    r = c.post(f"/api/assignments/{assignment}/vote/", {"choice": "a", "rationale": text}, format="json")
    err = api_error(r)
    assert err["details"] == {"where": "body"} and "NUL" in err["message"]
    r = c.post(f"/api/assignments/{assignment}/skip/", {"reason": text}, format="json")
    api_error(r)
    assert not Vote.objects.exists()
    # A key with a NUL, and the raw byte (not JSON at all): the same answer.
    api_error(c.post(f"/api/assignments/{assignment}/vote/", data='{"choice": "a", "k\\u0000": 1}', content_type="application/json"))
    api_error(c.post(f"/api/assignments/{assignment}/vote/", data=b'{"choice": "a\x00"}', content_type="application/json"))
    # An escaped backslash before "u0000" is text, not a NUL: the vote goes through.
    r = c.post(f"/api/assignments/{assignment}/vote/", data=json.dumps({"choice": "a", "rationale": "\\u0000"}),
               content_type="application/json")
    assert r.status_code == 201, r.content
    assert Vote.objects.get().rationale == "\\u0000"


def test_nul_in_a_urlencoded_form_field(api, campaign, comparisons, admin_user):
    c = api(admin_user)
    assignment = lease(c)
    r = c.post(f"/api/assignments/{assignment}/vote/", "choice=a&rationale=x%00", content_type="application/x-www-form-urlencoded")
    err = api_error(r)
    assert err["details"] == {"where": "form", "field": "rationale"}
    assert not Vote.objects.exists()


def test_nul_in_a_multipart_field_is_refused_while_file_contents_are_left_to_the_importer(api, campaign, admin_user):
    c = api(admin_user)
    lines = b'{"prompt": "q", "chosen": "good", "rejected": "bad"}\n'
    f = SimpleUploadedFile("p.jsonl", lines)
    err = api_error(c.post("/api/campaigns/c1/preferences/import/", {"file": f, "format": "trl\x00"}, format="multipart"))
    assert "NUL" in err["message"] and err["details"] == {"where": "multipart", "field": "format"}
    assert not Preference.objects.exists()
    # A NUL inside the uploaded file is the importer's business (it reports the line), not the middleware's.
    f = SimpleUploadedFile("p.jsonl", lines + b'{"prompt": "q\\u0000", "chosen": "a", "rejected": "b"}\n')
    r = c.post("/api/campaigns/c1/preferences/import/", {"file": f, "format": "trl"}, format="multipart")
    assert r.status_code in (200, 201, 400), r.content


def test_a_large_upload_still_goes_through(api, campaign, settings, admin_user):
    # Over FILE_UPLOAD_MAX_MEMORY_SIZE: the upload goes to a temporary file, as before.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = b"".join(b'{"prompt": "prompt number %d"}\n' % i for i in range(200))
    r = api(admin_user).post("/api/campaigns/c1/prompts/import/", {"file": SimpleUploadedFile("p.jsonl", body)},
                             format="multipart")
    assert r.status_code == 201 and r.json()["created"] == 200
    assert Prompt.objects.filter(campaign=campaign).count() == 200


def test_nul_in_a_page_form_gives_a_plain_400_and_writes_nothing(campaign, admin_user):
    c = Client()
    c.force_login(admin_user)
    before = GuidelineVersion.objects.count()
    for kwargs in ({}, {"content_type": "multipart/form-data; boundary=BoUnDaRy"}):
        data = {"text": "new text \x00"}
        if kwargs:
            from django.test.client import encode_multipart

            data = encode_multipart("BoUnDaRy", data)
        r = c.post("/console/c1/guideline/", data, **kwargs)
        assert r.status_code == 400, r.content[:300]
        assert not r["Content-Type"].startswith("application/json")
    assert GuidelineVersion.objects.count() == before


def test_nul_in_a_login_form_is_refused_before_anything_is_written(db):
    UserFactory(username="ann")
    from axes.models import AccessAttempt

    r = Client().post("/accounts/login/", {"username": "ann\x00", "password": "x"})
    assert r.status_code == 400
    assert not AccessAttempt.objects.exists()  # axes recorded no failed login


def test_nul_in_credentials_is_refused(api, campaign, annotator):
    Token.objects.create(user=annotator)
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Token " + "a" * 39 + "\x00")
    err = api_error(c.get("/api/campaigns/"))
    assert err["details"] == {"where": "header", "field": "Authorization"}
    r = Client(HTTP_COOKIE="sessionid=abcdefgh\x00").get("/")
    assert r.status_code == 400


def test_nul_under_v1_answers_in_openai_shape(reviewer):
    c = APIClient()
    c.force_authenticate(reviewer)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi\u0000"}]}
    err = openai_error(c.post("/v1/chat/completions", body, format="json"))
    assert "NUL" in err["message"] and err["code"] == "invalid"
    openai_error(c.get("/v1/models?x=%00"))


# ---------------------------------------------------------------- unknown paths


@pytest.mark.parametrize("path", ["/api/nope/", "/api/campaigns/c1/nope/", "/api/assignments/x/vote/", "/api/"])
def test_unknown_api_paths_answer_json_404(api, annotator, path):
    err = api_error(api(annotator).get(path), status=404, code="not_found")
    assert path in err["message"]
    # Anonymous too: an unknown path is unknown to everyone.
    api_error(APIClient().post(path), status=404, code="not_found")


def test_unknown_v1_paths_answer_in_openai_shape(reviewer):
    c = APIClient()
    c.force_authenticate(reviewer)
    r = c.get("/v1/nope")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "not_found" and "/v1/nope" in err["message"]


def test_pages_keep_html_404_and_api_keeps_its_slash_redirect(annotator):
    c = Client()
    c.force_login(annotator)
    r = c.get("/no-such-page/")
    assert r.status_code == 404 and r["Content-Type"].startswith("text/html")
    r = c.get("/api/campaigns")  # APPEND_SLASH still redirects a known API path without its slash
    assert r.status_code == 301 and r["Location"] == "/api/campaigns/"


def test_a_json_body_over_the_memory_limit_is_refused_not_read_unchecked(api, campaign, admin_user, settings):
    """Django would refuse request.body past DATA_UPLOAD_MAX_MEMORY_SIZE, but DRF reads the stream
    anyway: such a body would skip the NUL check. It answers 413 instead, and nothing is written."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = Prompt.objects.count()
    body = json.dumps({"campaign": "c1", "kind": "dpo", "config": {"note": "\u0000"}, "pad": "x" * 2000})
    r = api(admin_user).post("/api/training-runs/", body, content_type="application/json")
    assert api_error(r, 413, "too_large")["message"].startswith("The request body is larger")
    assert Prompt.objects.count() == before
