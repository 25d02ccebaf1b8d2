"""What keeps the loop honest between turns: on-policy training data (each round learns from the
pairs its own policy sampled), the stale-work sweep (a lost worker's run or evaluation does not
block its campaign forever), cancelling an evaluation, the promotions list, the gate's minimum
number of eval prompts, and the run page watching for its evaluation after the run ends."""

import io
import json
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from annotation import selectors, services
from annotation.models import Campaign, Evaluation, ModelVersion, Preference, Prompt, TrainingRun
from tests.factories import CampaignFactory, PromptFactory, ResponseFactory
from tests.test_api import assert_error
from workers import tasks
from workers.evaluation import run_evaluation
from workers.training_jobs import run_training

SMALL = {"max_steps": 1, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1, "lr": 1e-3}


def preference(campaign, version: ModelVersion | None, n: int, split=Prompt.Split.TRAIN) -> Preference:
    prompt = PromptFactory(campaign=campaign, split=split, messages=[{"role": "user", "content": f"Question {n}?"}])
    chosen, rejected = (ResponseFactory(prompt=prompt, model_version=version, text=f"Answer {n}{side}.") for side in "ab")
    return Preference.objects.create(campaign=campaign, prompt=prompt, chosen=chosen, rejected=rejected, source=Preference.Source.HUMAN)


@pytest.fixture
def versions(campaign):
    old = services.model_version_register_base(spec="some/old-policy")
    new = services.model_version_register_base(spec="some/new-policy")
    return old, new


# ---------------------------------------------------------------- on-policy data


def test_on_policy_records_are_the_pairs_the_version_sampled(campaign, versions):
    old, new = versions
    mine = [preference(campaign, new, i) for i in range(3)]
    preference(campaign, old, 10)
    preference(campaign, None, 11)  # imported: no model version
    preference(campaign, new, 12, split=Prompt.Split.EVAL)  # held out either way
    mixed = preference(campaign, new, 13)
    Preference.objects.filter(pk=mixed.pk).update(rejected=ResponseFactory(prompt=mixed.prompt, model_version=old, text="x"))
    every, _ = selectors.training_records(campaign=campaign)
    on_policy, _ = selectors.training_records(campaign=campaign, sampled_by=new)
    assert len(every) == 6
    assert [r.prompt[0]["content"] for r in on_policy] == [p.prompt.messages[0]["content"] for p in mine]


def test_an_on_policy_run_trains_on_its_base_versions_pairs_only(db, settings, tiny_policy, tmp_path, campaign):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    base = services.campaign_policy_ensure(campaign=campaign)
    other = services.model_version_register_base(spec="some/other-policy")
    for i in range(2):
        preference(campaign, base, i)
    for i in range(2, 7):
        preference(campaign, other, i)
    run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL, data_scope="on_policy", dispatch=False)
    assert run_training(run_id=run.pk, evaluate=False) == "succeeded"
    run.refresh_from_db()
    assert (run.data_manifest["rows"], run.data_manifest["scope"]) == (2, "on_policy")
    everything = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL, dispatch=False)
    assert run_training(run_id=everything.pk, evaluate=False) == "succeeded"
    everything.refresh_from_db()
    assert (everything.data_manifest["rows"], everything.data_manifest["scope"]) == (7, "all")
    # A version that sampled nothing of this campaign: the run fails and says why.
    empty = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL, data_scope="on_policy",
                                         base_version=ModelVersion.objects.get(training_run=run), dispatch=False)
    assert run_training(run_id=empty.pk, evaluate=False) == "failed"
    empty.refresh_from_db()
    assert empty.error.startswith(f"no training preferences on pairs sampled by {empty.base_version.name} (data scope on_policy)")


def test_data_scope_through_the_api_the_shell_and_the_retrain_policy(api, campaign, admin_user, versions, sent):
    old, _ = versions
    r = api(admin_user).post("/api/training-runs/", {"campaign": "c1", "kind": "dpo", "data_scope": "on_policy"}, format="json")
    assert r.status_code == 202 and r.json()["data_scope"] == "on_policy"
    err = assert_error(api(admin_user).post("/api/training-runs/", {"campaign": "c1", "kind": "sft", "data_scope": "mine"},
                                            format="json"), 400, "invalid")
    assert "data_scope" in json.dumps(err)
    with pytest.raises(Exception, match="Unknown data scope 'mine'"):
        services.training_run_create(campaign=campaign, kind="sft", data_scope="mine")
    call_command("train", "--campaign", "c1", "--kind", "reward", "--data", "on_policy", stdout=io.StringIO())
    assert TrainingRun.objects.get(kind="reward").data_scope == "on_policy"
    assert TrainingRun.objects.filter(data_scope="on_policy").count() == 2 and not TrainingRun.objects.filter(kind="sft").exists()


def test_console_starts_an_on_policy_run(campaign, admin_user, versions, sent):
    c = Client()
    c.force_login(admin_user)
    page = c.get("/console/c1/").content.decode()
    assert 'name="data_scope"' in page and 'value="on_policy"' in page
    r = c.post("/console/c1/runs/", {"kind": "dpo", "data_scope": "on_policy"})
    run = TrainingRun.objects.get()
    assert r.status_code == 302 and run.data_scope == "on_policy"
    assert "on-policy: preferences on pairs the base version sampled" in c.get(f"/console/runs/{run.pk}/").content.decode()
    bad = c.post("/console/c1/runs/", {"kind": "sft", "data_scope": "mine"})
    assert bad.status_code == 400 and "Unknown data scope" in bad.content.decode()


# ---------------------------------------------------------------- stale work


def test_the_sweep_fails_runs_and_evaluations_a_lost_worker_left_running(campaign, versions, settings, sent):
    settings.PREFLOOP = {**settings.PREFLOOP, "WORK_STALE_MINUTES": 60}
    old, new = versions
    campaign.policy = old
    campaign.save(update_fields=["policy"])
    lost = services.training_run_create(campaign=campaign, kind="dpo", base_version=old)
    services.training_run_start(run_id=lost.pk, device="cpu", data_manifest={})
    alive = services.training_run_create(campaign=campaign, kind="reward", base_version=old)
    services.training_run_start(run_id=alive.pk, device="cpu", data_manifest={})
    waiting = services.training_run_create(campaign=campaign, kind="sft", base_version=old)  # queued: a busy gpu, not lost
    long_ago = timezone.now() - timedelta(minutes=61)
    TrainingRun.objects.filter(pk__in=[lost.pk, waiting.pk]).update(heartbeat_at=long_ago, started_at=long_ago, created_at=long_ago)
    TrainingRun.objects.filter(pk=alive.pk).update(started_at=long_ago)  # started long ago, but steps on: alive
    services.training_run_progress(run_id=alive.pk, step=1, total_steps=10)
    evaluation = services.evaluation_create(campaign=campaign, candidate=new)
    services.evaluation_start(evaluation_id=evaluation.pk, sampling_params={})
    Evaluation.objects.filter(pk=evaluation.pk).update(started_at=long_ago)

    assert tasks.sweep_stale() == {"runs": [lost.pk], "evaluations": [evaluation.pk]}
    statuses = dict(TrainingRun.objects.values_list("pk", "status"))
    assert statuses == {lost.pk: "failed", alive.pk: "running", waiting.pk: "queued"}
    lost.refresh_from_db()
    evaluation.refresh_from_db()
    assert lost.error.startswith("no sign of life from its worker for 60 minutes") and lost.finished_at
    assert evaluation.status == "failed" and evaluation.error.startswith("no sign of life")
    # The campaign is no longer blocked, and a late word from the lost worker changes nothing.
    services.training_run_create(campaign=campaign, kind="dpo", base_version=old)
    assert services.training_run_finish(run_id=lost.pk, status="succeeded", artifact_path="/tmp/late") is None
    assert TrainingRun.objects.get(pk=lost.pk).status == "failed" and not ModelVersion.objects.filter(training_run=lost).exists()
    assert tasks.sweep_stale() == {"runs": [], "evaluations": []}
    assert "sweep-stale" in settings.CELERY_BEAT_SCHEDULE


def test_work_whose_worker_dies_while_loading_is_swept_not_left_queued_for_good(campaign, versions, settings, monkeypatch, sent):
    """A pool child SIGKILLed (out of memory) after it took a run or an evaluation and before its
    first step is acknowledged by its surviving main process as lost, so never redelivered, and
    only running work is swept: the work is marked running before the worker imports the
    trainers or exports data (an import that fails stands in for the kill here)."""
    settings.PREFLOOP = {**settings.PREFLOOP, "WORK_STALE_MINUTES": 60}
    old, new = versions
    campaign.policy = old
    campaign.save(update_fields=["policy"])
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=old)
    evaluation = services.evaluation_create(campaign=campaign, candidate=new)
    with monkeypatch.context() as m:
        for module in ("training.recipes", "training.evaluation"):
            m.setitem(sys.modules, module, None)  # importing it raises ImportError
        with pytest.raises(ImportError):
            run_training(run_id=run.pk)
        with pytest.raises(ImportError):
            run_evaluation(evaluation_id=evaluation.pk)
    assert TrainingRun.objects.get(pk=run.pk).status == "running" and Evaluation.objects.get(pk=evaluation.pk).status == "running"
    swept = services.stale_work_fail(now=timezone.now() + timedelta(minutes=61))
    assert (swept.runs, swept.evaluations) == ([run.pk], [evaluation.pk])
    services.training_run_create(campaign=campaign, kind="dpo", base_version=old)  # the campaign's dpo runs are free again


def test_a_lost_refills_redelivered_task_samples_nothing_once_its_claim_moved_on(db, monkeypatch):
    """A gpu worker SIGKILLed mid-refill never releases its claim, and its message stays in
    Redis until the visibility timeout; by then the beat has taken the stale claim over. The
    redelivered task must not sample as well: two refills would fill the buffer twice."""
    from workers import sampling

    c = CampaignFactory(buffer_size=4)
    PromptFactory(campaign=c)
    calls = []
    monkeypatch.setattr(sampling, "campaign_sample_pairs",
                        lambda *, campaign_id, n: calls.append(n) or sampling.SampleReport(campaign=c.slug, policy="p",
                                                                                        arena_policy=None, requested=n))
    lost = services.campaign_refill_claim(campaign_id=c.pk)  # its worker died: its `finally` never ran
    newer = services.campaign_refill_claim(campaign_id=c.pk, now=lost + timedelta(minutes=61))  # the beat takes over
    assert newer is not None
    assert tasks.sample_pairs(c.pk, 4, refill_claim=lost.isoformat()) == {"created": 0, "requested": 0}
    assert calls == [] and Campaign.objects.get(pk=c.pk).refill_requested_at == newer  # the newer claim stands
    assert tasks.sample_pairs(c.pk, 4, refill_claim=newer.isoformat())["requested"] == 4 and calls == [4]
    assert Campaign.objects.get(pk=c.pk).refill_requested_at is None  # released by its holder
    assert tasks.sample_pairs(c.pk, 4, refill_claim=lost.isoformat()) == {"created": 0, "requested": 0}  # released: nothing
    assert calls == [4]


# ---------------------------------------------------------------- evaluation cancel, promotions list


def test_cancel_an_evaluation_from_the_api_and_the_console(api, campaign, versions, admin_user, reviewer, sent):
    old, new = versions
    campaign.policy = old
    campaign.save(update_fields=["policy"])
    evaluation = services.evaluation_create(campaign=campaign, candidate=new)
    assert_error(api(reviewer).post(f"/api/evaluations/{evaluation.pk}/cancel/"), 403, "permission_denied")
    r = api(admin_user).post(f"/api/evaluations/{evaluation.pk}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert api(admin_user).post(f"/api/evaluations/{evaluation.pk}/cancel/").json()["status"] == "cancelled"
    # The worker's figures arriving afterwards are not stored and the gate does not run.
    figures = {"n_prompts": 20, "wins": 20, "ties": 0, "losses": 0, "win_rate": 1.0, "win_low": 0.8, "win_high": 1.0, "kl": 0.1}
    services.evaluation_finish(evaluation_id=evaluation.pk, figures=figures, reference=old, reward_model=old)
    evaluation.refresh_from_db()
    campaign.refresh_from_db()
    assert (evaluation.status, evaluation.win_rate, campaign.policy) == ("cancelled", None, old)
    assert_error(api(admin_user).post("/api/evaluations/987654/cancel/"), 404, "not_found")
    # The console's button, on a running one; a finished one is a conflict.
    running = services.evaluation_create(campaign=campaign, candidate=new)
    services.evaluation_start(evaluation_id=running.pk, sampling_params={})
    c = Client()
    c.force_login(admin_user)
    assert 'id="evaluation-cancel-form"' in c.get(f"/console/evaluations/{running.pk}/").content.decode()
    assert c.post(f"/console/evaluations/{running.pk}/cancel/").status_code == 302
    assert Evaluation.objects.get(pk=running.pk).status == "cancelled"
    done = services.evaluation_create(campaign=campaign, candidate=new)
    services.evaluation_fail(evaluation_id=done.pk, error="boom")
    assert assert_error(api(admin_user).post(f"/api/evaluations/{done.pk}/cancel/"), 409, "conflict")["details"] == {"status": "failed"}


def test_promotions_list(api, campaign, versions, admin_user, reviewer, annotator):
    old, new = versions
    services.campaign_policy_promote(campaign=campaign, version=old, user=admin_user, reason="first")
    services.campaign_policy_promote(campaign=campaign, version=new, user=None, reason="gate: win rate 0.8")
    services.campaign_policy_rollback(campaign=campaign, user=admin_user, reason="worse in use")
    body = api(reviewer).get("/api/promotions/?campaign=c1").json()
    rows = body["results"] if isinstance(body, dict) else body
    assert [(r["action"], r["from_version"], r["to_version"], r["by"], r["reason"]) for r in rows] == [
        ("rollback", new.name, old.name, admin_user.username, "worse in use"),
        ("promote", old.name, new.name, None, "gate: win rate 0.8"),
        ("promote", None, old.name, admin_user.username, "first"),
    ]
    assert_error(api(annotator).get("/api/promotions/"), 403, "permission_denied")
    assert_error(api(reviewer).get("/api/promotions/?campaign=nope"), 404, "not_found")
    paths = json.loads(api(admin_user).get("/api/schema/?format=json").content)["paths"]
    assert set(paths["/api/promotions/"]["get"]["responses"]) == {"200", "400", "401", "403", "404"}
    assert set(paths["/api/evaluations/{evaluation_id}/cancel/"]["post"]["responses"]) == {"200", "400", "401", "403", "404", "409"}


# ---------------------------------------------------------------- the run page after the run


def test_the_run_page_keeps_polling_until_its_evaluation_is_decided(campaign, versions, admin_user, sent):
    old, _ = versions
    campaign.policy = old
    campaign.save(update_fields=["policy"])
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=old)
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={})
    version = services.training_run_finish(run_id=run.pk, status="succeeded", artifact_path="/tmp/x")
    c = Client()
    c.force_login(admin_user)

    def polls() -> bool:
        return "hx-get=\"/console/runs/" in c.get(f"/console/runs/{run.pk}/status/").content.decode()

    assert polls()  # finished, its evaluation not queued yet
    evaluation = services.evaluation_create(campaign=campaign, candidate=version)
    assert polls()  # queued
    services.evaluation_fail(evaluation_id=evaluation.pk, error="no reward model")
    assert not polls()  # decided: nothing more to wait for
    TrainingRun.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(hours=1))
    Evaluation.objects.all().delete()
    assert not polls()  # long finished and never evaluated: no endless polling
