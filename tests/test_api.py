"""The REST API: the annotator flow, one error shape, roles, import/export, schema."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Assignment, Campaign, Preference, Prompt, Vote
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory


def next_item(client, slug="c1"):
    r = client.post(f"/api/campaigns/{slug}/next/")
    assert r.status_code == 200, r.content
    return r.json()


def assert_error(r, status, code):
    assert r.status_code == status, r.content
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return body["error"]


def test_annotator_flow_next_vote_progress(api, campaign, comparisons, annotator):
    c = api(annotator)
    data = next_item(c)
    a = data["assignment"]
    assert data["progress"] == {"done": 0, "skipped": 0, "remaining": 4, "remaining_capped": False}
    assert [r["label"] for r in a["responses"]] == ["A", "B"]
    assert a["messages"][0]["role"] == "user" and a["guideline"]["version"] == 1
    r = c.post(f"/api/assignments/{a['id']}/vote/", {"choice": "a", "strength": "slightly", "seconds_spent": 3.2}, format="json")
    assert r.status_code == 201 and r.json()["created"] is True
    again = c.post(f"/api/assignments/{a['id']}/vote/", {"choice": "a", "strength": "slightly"}, format="json")
    assert again.status_code == 200 and again.json()["created"] is False and "already recorded" in again.json()["detail"]
    assert Vote.objects.count() == 1
    assert next_item(c)["progress"] == {"done": 1, "skipped": 0, "remaining": 3, "remaining_capped": False}


def test_payload_hides_gold_and_identities(api, db, annotator):
    campaign = CampaignFactory(slug="g", gold_rate=1.0, members=[annotator])
    ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
    raw = json.dumps(next_item(api(annotator), "g"))
    for word in ("gold", "kind", "response_a", "model", "vote_count", "annotator"):
        assert word not in raw


def test_user_content_is_escaped_and_markdown_rendered(api, db, annotator):
    campaign = CampaignFactory(slug="x", members=[annotator])
    prompt = PromptFactory(campaign=campaign, messages=[{"role": "user", "content": "<script>alert(1)</script> **bold**"}])
    ComparisonFactory(
        campaign=campaign,
        prompt=prompt,
        response_a=ResponseFactory(prompt=prompt, text='<img src=x onerror="alert(2)"> [x](javascript:alert(3))'),
        response_b=ResponseFactory(prompt=prompt, text="```python\nprint('hi')\n```"),
    )
    a = next_item(api(annotator), "x")["assignment"]
    html = a["messages"][0]["html"]
    assert "<script>" not in html and "&lt;script&gt;" in html and "<strong>bold</strong>" in html
    texts = {r["text"]: r["html"] for r in a["responses"]}
    bad = texts['<img src=x onerror="alert(2)"> [x](javascript:alert(3))']
    assert "<img" not in bad and 'href="javascript' not in bad
    assert '<code class="language-python">' in texts["```python\nprint('hi')\n```"]


def test_vote_errors_have_one_shape(api, campaign, comparisons, annotators):
    c0, c1 = api(annotators[0]), api(annotators[1])
    a = next_item(c0)["assignment"]
    assert_error(c1.post(f"/api/assignments/{a['id']}/vote/", {"choice": "a"}, format="json"), 403, "forbidden")
    err = assert_error(c0.post(f"/api/assignments/{a['id']}/vote/", {"choice": "maybe"}, format="json"), 400, "invalid")
    assert "choice" in err["details"]["fields"]
    assert_error(c0.post(f"/api/assignments/{a['id']}/vote/", {"choice": "a", "rationale": "x" * 6000}, format="json"), 400, "invalid")
    assert_error(c0.post("/api/assignments/999999/vote/", {"choice": "a"}, format="json"), 404, "not_found")
    assert_error(c0.post(f"/api/assignments/{a['id']}/skip/", {}, format="json"), 400, "invalid")
    c0.post(f"/api/assignments/{a['id']}/vote/", {"choice": "a"}, format="json")
    assert_error(c0.post(f"/api/assignments/{a['id']}/vote/", {"choice": "b"}, format="json"), 409, "already_voted")
    assert_error(c0.post("/api/campaigns/nope/next/"), 404, "not_found")
    # No credentials: 401 with the scheme to use (token authentication comes first), as the schema says.
    anonymous = APIClient().post("/api/campaigns/c1/next/")
    assert_error(anonymous, 401, "not_authenticated")
    assert anonymous.headers["WWW-Authenticate"] == "Token"


def test_skip_via_api(api, campaign, comparisons, annotator):
    c = api(annotator)
    a = next_item(c)["assignment"]
    r = c.post(f"/api/assignments/{a['id']}/skip/", {"reason": "unsure"}, format="json")
    assert r.status_code == 200
    assert next_item(c)["progress"]["skipped"] == 1


def test_annotators_see_only_their_own_votes_reviewers_see_all(api, campaign, comparisons, annotators, reviewer):
    for user in annotators[:2]:
        c = api(user)
        a = next_item(c)["assignment"]
        c.post(f"/api/assignments/{a['id']}/vote/", {"choice": "tie"}, format="json")
    mine = api(annotators[0]).get("/api/votes/?campaign=c1").json()["results"]
    assert [v["annotator"] for v in mine] == [annotators[0].username]
    everyone = api(reviewer).get("/api/votes/?campaign=c1").json()["results"]
    assert sorted(v["annotator"] for v in everyone) == sorted(u.username for u in annotators[:2])


@pytest.mark.parametrize("role", ["reviewer", None])
def test_non_annotators_cannot_take_work(api, campaign, comparisons, role):
    from tests.factories import UserFactory

    r = api(UserFactory(role=role)).post("/api/campaigns/c1/next/")
    assert_error(r, 403, "permission_denied")


def test_export_requires_permission_and_streams_jsonl(api, campaign, annotator, admin_user):
    assert_error(api(annotator).get("/api/campaigns/c1/preferences.jsonl"), 403, "permission_denied")
    prompt = PromptFactory(campaign=campaign)
    Preference.objects.create(
        campaign=campaign, prompt=prompt, chosen=ResponseFactory(prompt=prompt), rejected=ResponseFactory(prompt=prompt), source="import"
    )
    r = api(admin_user).get("/api/campaigns/c1/preferences.jsonl?with_meta=1")
    assert r.status_code == 200 and r.streaming and r["Content-Type"] == "application/jsonl"
    rows = [json.loads(line) for line in b"".join(r.streaming_content).decode().splitlines()]
    assert len(rows) == 1 and rows[0]["source"] == "import" and rows[0]["prompt"] == prompt.messages


def test_prompt_import_api(api, campaign, annotator, admin_user):
    body = b'{"prompt": "one"}\n{"prompt": ""}\n'
    upload = lambda: SimpleUploadedFile("p.jsonl", body, content_type="application/jsonl")  # noqa: E731
    assert_error(api(annotator).post("/api/campaigns/c1/prompts/import/", {"file": upload()}, format="multipart"), 403, "permission_denied")
    err = assert_error(
        api(admin_user).post("/api/campaigns/c1/prompts/import/", {"file": upload(), "strict": "true"}, format="multipart"), 400, "invalid_file"
    )
    assert err["details"]["errors"] == [{"line": 2, "reason": "prompt is empty"}]
    assert not Prompt.objects.exists()
    r = api(admin_user).post("/api/campaigns/c1/prompts/import/", {"file": upload()}, format="multipart")
    assert r.status_code == 201 and r.json()["created"] == 1 and len(r.json()["errors"]) == 1
    bad = SimpleUploadedFile("p.jsonl", b"\xff\xfe\x00bad", content_type="application/jsonl")
    r = api(admin_user).post("/api/campaigns/c1/prompts/import/", {"file": bad}, format="multipart")
    assert r.status_code == 200 and r.json()["created"] == 0
    assert r.json()["errors"] == [{"line": 1, "reason": "not UTF-8 text (byte 1 of the line is 0xff)"}]


def test_preference_import_api(api, campaign, admin_user):
    f = SimpleUploadedFile("p.jsonl", io.BytesIO(b'{"prompt": "q", "chosen": "good", "rejected": "bad"}\n').read())
    r = api(admin_user).post("/api/campaigns/c1/preferences/import/", {"file": f, "format": "trl"}, format="multipart")
    assert r.status_code == 201 and r.json()["created"] == 1


def test_token_auth(campaign, comparisons, annotator):
    token = Token.objects.create(user=annotator)
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert c.post("/api/campaigns/c1/next/").status_code == 200
    c.credentials(HTTP_AUTHORIZATION="Token wrong")
    bad = c.post("/api/campaigns/c1/next/")
    assert_error(bad, 401, "authentication_failed")
    assert bad.headers["WWW-Authenticate"] == "Token"


def test_schema_and_docs(api, annotator):
    c = api(annotator)
    schema = c.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/campaigns/{slug}/next/" in paths and "/api/assignments/{assignment_id}/vote/" in paths
    docs = c.get("/api/docs/")
    assert docs.status_code == 200 and b"cdn" not in docs.content.lower()


def test_a_vote_can_bring_the_next_lease(api, campaign, comparisons, annotator):
    """``"next": true``: the vote's answer holds what next answers (a real lease: next then returns
    it as the one held), in the same shape; without it the answer is as before."""
    from tests.test_gold_blind import shape

    c = api(annotator)
    first = c.post("/api/campaigns/c1/next/").json()
    r = c.post(f"/api/assignments/{first['assignment']['id']}/vote/", {"choice": "a", "next": True}, format="json")
    assert r.status_code == 201 and r.json()["created"] and Vote.objects.filter(pk=r.json()["vote_id"]).exists()
    nxt = r.json()["next"]
    assert shape(nxt) == shape(first) and nxt["assignment"]["id"] != first["assignment"]["id"]
    assert nxt["progress"] == {"done": 1, "skipped": 0, "remaining": first["progress"]["remaining"] - 1, "remaining_capped": False}
    lease = Assignment.objects.get(pk=nxt["assignment"]["id"])
    assert lease.annotator == annotator and lease.state == Assignment.State.ACTIVE
    assert c.post("/api/campaigns/c1/next/").json() == nxt  # the lease held: next hands the same one
    plain = c.post(f"/api/assignments/{lease.pk}/vote/", {"choice": "b"}, format="json").json()
    assert set(plain) == {"vote_id", "created", "detail"}
    again = c.post(f"/api/assignments/{lease.pk}/vote/", {"choice": "b", "next": True}, format="json")  # idempotent
    assert again.status_code == 200 and not again.json()["created"] and again.json()["next"]["assignment"] is not None


def test_a_vote_asking_for_the_next_lease_is_stored_when_none_is_left(api, db, annotators):
    from tests.factories import CampaignFactory, ComparisonFactory

    CampaignFactory(slug="one", votes_per_pair=1, members=annotators[:1])
    comparison = ComparisonFactory(campaign=Campaign.objects.get(slug="one"))
    c = api(annotators[0])
    lease = c.post("/api/campaigns/one/next/").json()["assignment"]
    r = c.post(f"/api/assignments/{lease['id']}/vote/", {"choice": "a", "next": True}, format="json")
    assert r.status_code == 201
    assert r.json()["next"] == {"assignment": None, "progress": {"done": 1, "skipped": 0, "remaining": 0, "remaining_capped": False}}
    assert Vote.objects.get(pk=r.json()["vote_id"]).comparison == comparison
    # The campaign was closed meanwhile: the vote stands, ``next`` is null (next itself says why).
    two = CampaignFactory(slug="two", votes_per_pair=1, members=annotators[:1])
    ComparisonFactory(campaign=two), ComparisonFactory(campaign=two)
    lease = c.post("/api/campaigns/two/next/").json()["assignment"]
    Campaign.objects.filter(slug="two").update(is_active=False)
    r = c.post(f"/api/assignments/{lease['id']}/vote/", {"choice": "b", "next": True}, format="json")
    assert r.status_code == 201 and r.json()["next"] is None and Vote.objects.filter(pk=r.json()["vote_id"]).exists()


def test_the_schema_documents_the_vote_that_brings_the_next_lease(api, annotator):
    schema = api(annotator).get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    assert "next" in components["VoteInRequest"]["properties"]
    assert components["VoteSubmitOut"]["properties"]["next"]["allOf"][0]["$ref"].endswith("/NextOut") or \
        components["VoteSubmitOut"]["properties"]["next"].get("$ref", "").endswith("/NextOut")
