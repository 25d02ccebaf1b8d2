"""``/v1/chat/completions`` and ``/v1/models`` before any model runs: bearer-token auth, who may
call, OpenAI's error shape for every refused request (nothing is enqueued for those), and the
web's own timeout when no model worker answers. The round trips through a real worker are in
``test_openai_serving.py``."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(name="policy-v1", base="some/model")


def bearer(user) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return c


def assert_openai_error(r, status, *, param=None, code=None, kind=None):
    assert r.status_code == status, r.content
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if kind is not None:
        assert body["error"]["type"] == kind, body
    return body["error"]


def chat_body(**extra):
    return {"model": "policy-v1", "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_models_lists_policy_versions_only_for_token_holders_with_the_permission(version, reviewer, annotator):
    ModelVersion.objects.create(name="rm-v1", base="some/model", kind=ModelVersion.Kind.REWARD)
    r = bearer(reviewer).get("/v1/models")
    assert r.status_code == 200, r.content
    assert r.json()["object"] == "list" and [m["id"] for m in r.json()["data"]] == ["policy-v1"]
    assert_openai_error(APIClient().get("/v1/models"), 401, kind="authentication_error")
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_openai_error(bad.get("/v1/models"), 401, code="invalid_api_key")
    assert_openai_error(bearer(annotator).get("/v1/models"), 403, kind="permission_error")


@pytest.mark.parametrize("body, param", [
    (chat_body(model="nope"), "model"),
    (chat_body(model=None), "model"),
    (chat_body(messages=[]), "messages"),
    (chat_body(messages=[{"role": "robot", "content": "x"}]), "messages"),
    (chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages[0].content"),
    (chat_body(stream=True), "stream"),
    (chat_body(temperature=5), "temperature"),
    (chat_body(temperature="hot"), "temperature"),
    (chat_body(n=0), "n"),
    (chat_body(max_tokens=10 ** 6), "max_tokens"),
    (chat_body(top_logprobs=3), "top_logprobs"),
    (chat_body(top_logprobs=21, logprobs=True), "top_logprobs"),
    (chat_body(logprobs="yes"), "logprobs"),
    (chat_body(presence_penalty=1.0), "presence_penalty"),
    (chat_body(functions=[]), "functions"),
])
def test_refused_requests_get_openais_error_shape_and_enqueue_nothing(version, reviewer, sent, body, param):
    r = bearer(reviewer).post("/v1/chat/completions", body, format="json")
    assert_openai_error(r, 404 if body.get("model") == "nope" else 400, param=param)
    assert sent == []


def test_chat_needs_a_token_and_the_permission(version, annotator, sent):
    assert_openai_error(APIClient().post("/v1/chat/completions", chat_body(), format="json"), 401)
    assert_openai_error(bearer(annotator).post("/v1/chat/completions", chat_body(), format="json"), 403)
    assert sent == []


def test_validated_request_goes_to_the_serve_queue_text_parts_joined(version, reviewer, monkeypatch):
    from annotation import enqueue

    calls = []

    class Done:
        def get(self, timeout, propagate):
            return {"id": "chatcmpl-x", "object": "chat.completion", "choices": [], "usage": {}}

        def failed(self):
            return False

    def send(name, args=None, **kw):
        calls.append((name, args, kw))
        return Done()

    monkeypatch.setattr(enqueue.app, "send_task", send)
    body = chat_body(messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}], "name": "u"}],
                     max_completion_tokens=7, temperature=0, seed=3, user="someone", stream=False)
    r = bearer(reviewer).post("/v1/chat/completions", body, format="json")
    assert r.status_code == 200, r.content
    (name, args, kw), = calls
    assert name == "workers.tasks.chat_complete" and kw["expires"] > 0
    request = args[0]
    assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    assert (request["max_tokens"], request["temperature"], request["seed"], request["n"]) == (7, 0, 3, 1)
    from webapp.celery import app

    assert app.amqp.router.route({}, name)["queue"].name == "serve"


def test_no_worker_answers_a_504_in_time(version, reviewer, settings):
    """Nothing consumes ``serve`` in this module: the web gives up after its timeout, and the
    request expires so a worker started later does not run it for nobody."""
    settings.PREFLOOP = {**settings.PREFLOOP, "CHAT_TIMEOUT_SECONDS": 1.0}
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("serve")
    r = bearer(reviewer).post("/v1/chat/completions", chat_body(), format="json")
    assert_openai_error(r, 504, code="timeout", kind="server_error")
    assert "serve" in r.json()["error"]["message"]
    client.delete("serve")


def test_schema_documents_the_v1_endpoints_and_their_errors(reviewer):
    c = APIClient()
    c.force_authenticate(reviewer)
    schema = c.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    post = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "403", "404", "502", "504"} <= set(post["responses"])
    assert "/v1/models" in schema["paths"]


def test_chat_is_rate_limited_per_user(version, reviewer, sent, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"chat": "2/min"})
    client = bearer(reviewer)
    for _ in range(2):
        assert client.post("/v1/chat/completions", chat_body(model="nope"), format="json").status_code == 404
    r = client.post("/v1/chat/completions", chat_body(), format="json")
    assert_openai_error(r, 429, kind="rate_limit_error")
    assert int(r["Retry-After"]) >= 1 and sent == []
    cache.clear()
