"""The training API: start (202), list, detail with metric rows, cancel; who may do what; the
one-active-run rule as a 409; the OpenAPI schema documents it all."""

import json

import pytest

from annotation import services
from annotation.models import TrainingRun
from tests.factories import CampaignFactory
from tests.test_api import assert_error



@pytest.fixture
def base(db):
    return services.model_version_register_base(spec="some/base-model")


def start(client, **body):
    return client.post("/api/training-runs/", {"campaign": "c1", "kind": "dpo", **body}, format="json")


def test_admin_starts_a_run_202_queued_on_commit(api, campaign, admin_user, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = start(api(admin_user), config={"beta": 0.2, "max_steps": 5})
    assert r.status_code == 202, r.content
    body = r.json()
    run = TrainingRun.objects.get()
    assert body["id"] == run.pk and body["status"] == "queued" and body["trigger"] == "api"
    assert body["created_by"] == admin_user.username and body["campaign"] == "c1" and body["kind"] == "dpo"
    assert body["config"] == {"beta": 0.2, "max_steps": 5} and body["metrics"] == [] and body["output_version"] is None
    assert body["base_version"] == run.base_version.name and (body["step"], body["total_steps"]) == (0, None)
    assert sent == [("workers.tasks.gpu_train", [run.pk])]
    # The second one of the kind is a conflict that names the first.
    err = assert_error(start(api(admin_user)), 409, "conflict")
    assert err["details"] == {"run_id": run.pk} and f"(run {run.pk})" in err["message"]
    assert start(api(admin_user), kind="reward").status_code == 202


def test_bad_requests_are_400_with_the_field(api, campaign, admin_user, base):
    c = api(admin_user)
    assert assert_error(start(c, config={"betta": 1}), 400, "invalid")["details"] == {"field": "config"}
    assert "cannot set 'model'" in assert_error(start(c, config={"model": "gpt2"}), 400, "invalid")["message"]
    assert "kind" in assert_error(start(c, kind="ppo-ish"), 400, "invalid")["details"]["fields"]
    assert assert_error(start(c, campaign="nope"), 400, "invalid")["details"] == {"field": "campaign"}
    assert assert_error(start(c, base_version="nope"), 400, "invalid")["details"] == {"field": "base_version"}
    assert "config" in assert_error(start(c, config=[1]), 400, "invalid")["details"]["fields"]
    assert not TrainingRun.objects.exists()
    r = start(c, base_version=base.name)
    assert r.status_code == 202 and r.json()["base_version"] == "some/base-model"


def test_roles(api, campaign, annotator, reviewer, admin_user, base):
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    for path in ("/api/training-runs/", f"/api/training-runs/{run.pk}/"):
        assert_error(api(annotator).get(path), 403, "permission_denied")
        assert api(reviewer).get(path).status_code == 200
    assert_error(start(api(annotator), kind="sft"), 403, "permission_denied")
    assert_error(start(api(reviewer), kind="sft"), 403, "permission_denied")
    assert_error(api(reviewer).post(f"/api/training-runs/{run.pk}/cancel/"), 403, "permission_denied")
    assert_error(api().get("/api/training-runs/"), 401, "not_authenticated")
    assert TrainingRun.objects.count() == 1


def test_list_detail_with_metric_rows_and_progress(api, campaign, reviewer, base):
    other = CampaignFactory(slug="c2")
    first = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    second = services.training_run_create(campaign=campaign, kind="reward", base_version=base)
    services.training_run_create(campaign=other, kind="dpo", base_version=base)
    c = api(reviewer)
    page = c.get("/api/training-runs/?campaign=c1").json()
    assert page["count"] == 2 and [r["id"] for r in page["results"]] == [second.pk, first.pk]  # newest first
    assert c.get("/api/training-runs/").json()["count"] == 3
    assert_error(c.get("/api/training-runs/?campaign=nope"), 404, "not_found")
    services.training_run_start(run_id=first.pk, device="cpu", data_manifest={"rows": 3})
    services.training_run_progress(run_id=first.pk, step=2, total_steps=8)
    services.training_run_log(run_id=first.pk, metrics={"step": 1, "loss": 0.69, "seconds_per_step": 1.5})
    services.training_run_log(run_id=first.pk, metrics={"step": 2, "loss": float("nan"), "seconds_per_step": 2.0})
    detail = c.get(f"/api/training-runs/{first.pk}/").json()
    assert detail["status"] == "running" and (detail["step"], detail["total_steps"]) == (2, 8) and detail["eta_seconds"] == 12.0
    assert detail["metrics"] == [{"step": 1, "loss": 0.69, "seconds_per_step": 1.5}, {"step": 2, "loss": None, "seconds_per_step": 2.0}]
    assert detail["data_manifest"] == {"rows": 3} and detail["device"] == "cpu"
    assert_error(c.get("/api/training-runs/987654/"), 404, "not_found")


def test_cancel(api, campaign, admin_user, base):
    c = api(admin_user)
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    r = c.post(f"/api/training-runs/{run.pk}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert c.post(f"/api/training-runs/{run.pk}/cancel/").json()["status"] == "cancelled"
    done = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    services.training_run_finish(run_id=done.pk, status="succeeded", artifact_path="/tmp/x")
    assert assert_error(c.post(f"/api/training-runs/{done.pk}/cancel/"), 409, "conflict")["details"] == {"status": "succeeded"}
    assert c.get(f"/api/training-runs/{done.pk}/").json()["output_version"] == f"some/base-model+dpo-{done.pk}"
    assert_error(c.post("/api/training-runs/987654/cancel/"), 404, "not_found")


def test_schema_documents_the_training_endpoints(api, annotator):
    paths = json.loads(api(annotator).get("/api/schema/?format=json").content)["paths"]
    create = paths["/api/training-runs/"]["post"]
    # 401 everywhere, 400 wherever there is input, 415 wherever a body: annotation/schema.py (tests/test_schema.py).
    assert set(create["responses"]) == {"202", "400", "401", "403", "409", "413", "415"}
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TrainingRunInRequest")
    assert set(paths["/api/training-runs/{run_id}/"]["get"]["responses"]) == {"200", "400", "401", "403", "404"}
    assert set(paths["/api/training-runs/{run_id}/cancel/"]["post"]["responses"]) == {"200", "400", "401", "403", "404", "409"}
    assert set(paths["/api/campaigns/{slug}/promote/"]["post"]["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "415"}
    assert set(paths["/api/campaigns/{slug}/rollback/"]["post"]["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "415"}
