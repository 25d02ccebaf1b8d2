"""The evaluations API: create (202, queued on commit), list, detail with figures and examples;
reviewers read, admins start, annotators neither; the refusals in the one error shape; the
OpenAPI schema documents it."""

import json

import pytest

from annotation import services
from annotation.models import Evaluation
from tests.test_api import assert_error



@pytest.fixture
def versions(campaign):
    """(active, candidate): the campaign's policy and another registered version."""
    active = services.model_version_register_base(spec="some/active-model")
    campaign.policy = active
    campaign.save(update_fields=["policy"])
    return active, services.model_version_register_base(spec="some/candidate-model")


def create(client, **body):
    return client.post("/api/evaluations/", {"campaign": "c1", "candidate": "some/candidate-model", **body}, format="json")


def test_admin_creates_202_queued_on_commit(api, campaign, versions, admin_user, sent, django_capture_on_commit_callbacks):
    active, candidate = versions
    with django_capture_on_commit_callbacks(execute=True):
        r = create(api(admin_user), seed=11, max_prompts=20)
    assert r.status_code == 202, r.content
    body, e = r.json(), Evaluation.objects.get()
    assert sent == [("workers.tasks.gpu_evaluate", [e.pk])]
    assert (body["id"], body["status"], body["trigger"], body["created_by"]) == (e.pk, "queued", "api", admin_user.username)
    assert (body["campaign"], body["candidate"], body["baseline"], body["seed"], body["max_prompts"]) == (
        "c1", candidate.name, active.name, 11, 20)
    assert body["win_rate"] is None and body["examples"] == [] and body["decision"] == "" and body["reward_model"] is None
    # One queued or running evaluation of a version per campaign.
    err = assert_error(create(api(admin_user)), 409, "conflict")
    assert err["details"] == {"evaluation_id": e.pk}


def test_bad_requests_are_400_with_the_field(api, campaign, versions, admin_user, sent):
    c = api(admin_user)
    assert assert_error(create(c, campaign="nope"), 400, "invalid")["details"] == {"field": "campaign"}
    assert assert_error(create(c, candidate="nope"), 400, "invalid")["details"] == {"field": "candidate"}
    assert "is the active policy" in assert_error(create(c, candidate="some/active-model"), 400, "invalid")["message"]
    assert "max_prompts" in assert_error(create(c, max_prompts=0), 400, "invalid")["details"]["fields"]
    assert "seed" in assert_error(create(c, seed=-1), 400, "invalid")["details"]["fields"]
    assert not Evaluation.objects.exists()


def test_list_and_detail_with_figures(api, campaign, versions, reviewer, sent):
    active, candidate = versions
    e = services.evaluation_create(campaign=campaign, candidate=candidate, seed=3)
    services.evaluation_finish(evaluation_id=e.pk, reference=active, reward_model=active, figures={
        "n_prompts": 2, "wins": 1, "ties": 1, "losses": 0, "win_rate": 0.75, "win_low": 0.3, "win_high": 0.95, "kl": 0.2,
        "mean_length_new": 5, "mean_length_active": 6, "distinct2_new": 1.0, "distinct2_active": 0.5,
        "examples": [{"prompt": [{"role": "user", "content": "Hi"}], "new": "a", "active": "b", "reward_new": 1.0,
                      "reward_active": 0.0, "outcome": "win", "seed": 3}],
    })
    c = api(reviewer)
    page = c.get("/api/evaluations/?campaign=c1").json()
    rows = page["results"]
    assert page["count"] == 1 and [row["id"] for row in rows] == [e.pk] and "examples" not in rows[0]
    assert (rows[0]["win_rate"], rows[0]["kl"], rows[0]["decision"], rows[0]["status"]) == (0.75, 0.2, "no_gate", "succeeded")
    assert c.get("/api/evaluations/").json()["results"][0]["id"] == e.pk
    body = c.get(f"/api/evaluations/{e.pk}/").json()
    assert body["examples"][0]["outcome"] == "win" and body["reference"] == active.name and body["reward_model"] == active.name
    assert (body["wins"], body["ties"], body["losses"], body["win_low"], body["win_high"]) == (1, 1, 0, 0.3, 0.95)
    assert c.get("/api/evaluations/99999/").status_code == 404
    assert_error(c.get("/api/evaluations/?campaign=nope"), 404, "not_found")


def test_permissions(api, campaign, versions, reviewer, annotator, sent):
    assert api().get("/api/evaluations/").status_code in (401, 403)
    assert api(annotator).get("/api/evaluations/").status_code == 403
    assert api(annotator).post("/api/evaluations/", {}, format="json").status_code == 403
    assert create(api(reviewer)).status_code == 403  # reviewers read, admins start
    assert api(reviewer).get("/api/evaluations/").status_code == 200
    assert not Evaluation.objects.exists()


def test_schema_documents_evaluations(api, admin_user):
    schema = json.loads(api(admin_user).get("/api/schema/?format=json").content)
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/evaluations/"]) and "get" in paths["/api/evaluations/{evaluation_id}/"]
    assert "202" in paths["/api/evaluations/"]["post"]["responses"]
    props = schema["components"]["schemas"]["EvaluationDetailOut"]["properties"]
    assert {"win_rate", "win_low", "win_high", "kl", "distinct2_new", "decision", "examples"} <= set(props)
