"""Periodic retraining: a campaign's RetrainPolicy, read by the beat task ``retrain_due``,
starts a run when enough new preferences arrived and the minimum interval passed; once, not
twice, under concurrent beats (PostgreSQL row lock + the one-active-run constraint)."""

import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django.utils import timezone

from annotation import selectors, services
from annotation.models import Preference, RetrainPolicy, TrainingRun
from annotation.services import retraining
from tests.factories import CampaignFactory, PromptFactory, ResponseFactory
from tests.test_pages import NO_RETRAIN_POLICY


def add_preferences(campaign, n: int, *, split: str = "train") -> None:
    for _ in range(n):
        prompt = PromptFactory(campaign=campaign, split=split)
        Preference.objects.create(campaign=campaign, prompt=prompt, chosen=ResponseFactory(prompt=prompt),
                                  rejected=ResponseFactory(prompt=prompt), source="human")



@pytest.fixture
def policy(campaign):
    return RetrainPolicy.objects.create(campaign=campaign, kind="dpo", config={"beta": 0.2}, every_n_preferences=3,
                                        min_interval_minutes=60)


def test_due_after_n_new_preferences_then_not_while_a_run_is_active(policy, campaign):
    add_preferences(campaign, 2)
    add_preferences(campaign, 5, split="eval")  # held-out prompts are not training data
    check = selectors.retrain_policy_check(policy=policy)
    assert not check.due and check.new_preferences == 2 and check.reason == "2 new preference(s) in all (no successful run yet), 3 needed"
    assert services.retrain_policies_trigger() == []
    add_preferences(campaign, 1)
    [run] = services.retrain_policies_trigger()
    assert (run.kind, run.config, run.trigger, run.created_by, run.campaign) == ("dpo", {"beta": 0.2}, "periodic", None, campaign)
    assert services.retrain_policies_trigger() == []  # queued: not twice
    assert selectors.retrain_policy_check(policy=policy).reason == f"dpo run {run.pk} is queued or running"


def test_counts_preferences_since_the_last_successful_run_and_waits_the_minimum_interval(policy, campaign):
    add_preferences(campaign, 4)
    [run] = services.retrain_policies_trigger()
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={})
    services.training_run_finish(run_id=run.pk, status="succeeded")
    add_preferences(campaign, 3)
    check = selectors.retrain_policy_check(policy=policy)
    assert not check.due and check.reason == "the last dpo run is younger than 60 min"
    later = timezone.now() + timedelta(minutes=61)
    check = selectors.retrain_policy_check(policy=policy, now=later)
    assert check.due and check.new_preferences == 3 and check.reason == f"3 new preference(s) since run {run.pk}"
    # A failed run of the kind also counts for the interval, not for the preferences.
    failed = services.training_run_create(campaign=campaign, kind="dpo")
    services.training_run_finish(run_id=failed.pk, status="failed", error="boom")
    TrainingRun.objects.filter(pk=failed.pk).update(created_at=later - timedelta(minutes=10))
    assert not selectors.retrain_policy_check(policy=policy, now=later).due
    [second] = services.retrain_policies_trigger(now=later + timedelta(minutes=60))
    assert second.trigger == "periodic"


def test_disabled_policies_inactive_campaigns_and_bad_stored_configs_start_nothing(policy, campaign, caplog):
    add_preferences(campaign, 3)
    RetrainPolicy.objects.filter(pk=policy.pk).update(enabled=False)
    assert services.retrain_policies_trigger() == []
    RetrainPolicy.objects.filter(pk=policy.pk).update(enabled=True, config={"betta": 1})
    assert services.retrain_policies_trigger() == []
    assert "unknown config key(s) for DPOConfig: betta" in caplog.text
    RetrainPolicy.objects.filter(pk=policy.pk).update(config={})
    campaign.is_active = False
    campaign.save()
    assert services.retrain_policies_trigger() == [] and not TrainingRun.objects.exists()


def test_policy_config_is_validated_like_a_runs(campaign):
    with pytest.raises(ValidationError) as bad:
        RetrainPolicy(campaign=campaign, kind="dpo", config={"betta": 1}).full_clean()
    assert bad.value.message_dict == {"config": ["Invalid dpo config: unknown config key(s) for DPOConfig: betta"]}
    with pytest.raises(ValidationError) as bad:
        RetrainPolicy(campaign=campaign, kind="kto", config={}).full_clean()
    assert "'kto' is not a valid choice" in bad.value.message_dict["kind"][0]
    RetrainPolicy(campaign=campaign, kind="reward", config={"epochs": 2}).full_clean()


def test_beat_schedule_and_task(policy, campaign, sent, django_capture_on_commit_callbacks):
    from workers.tasks import retrain_due

    assert settings.CELERY_BEAT_SCHEDULE["retrain-due"] == {"task": "workers.tasks.retrain_due", "schedule": 60.0}
    add_preferences(campaign, 3)
    with django_capture_on_commit_callbacks(execute=True):
        ids = retrain_due()
    assert ids == [TrainingRun.objects.get().pk] and sent == [("workers.tasks.gpu_train", ids)]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_beats_start_one_run(sent, monkeypatch):
    campaign = CampaignFactory()
    RetrainPolicy.objects.create(campaign=campaign, kind="dpo", every_n_preferences=1, min_interval_minutes=0)
    add_preferences(campaign, 2)
    create = retraining.training_run_create

    def slow_create(**kw):  # hold the policy's lock a while, so the two beats overlap for sure
        time.sleep(0.5)
        return create(**kw)

    monkeypatch.setattr(retraining, "training_run_create", slow_create)
    barrier, results = threading.Barrier(2), []

    def beat():
        try:
            barrier.wait(timeout=10)
            results.append([r.pk for r in services.retrain_policies_trigger()])
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    run = TrainingRun.objects.get()  # exactly one
    assert sorted(results, key=len) == [[], [run.pk]]
    assert run.trigger == "periodic" and sent == [("workers.tasks.gpu_train", [run.pk])]


def test_retrain_policy_inline_in_the_campaign_admin(campaign, admin_user):
    c = Client()
    c.force_login(admin_user)
    page = c.get(f"/admin/annotation/campaign/{campaign.pk}/change/")
    assert page.status_code == 200 and "retrain_policy-TOTAL_FORMS" in page.content.decode()
    data = {k: ("" if v is None else v) for k, v in page.context["adminform"].form.initial.items() if k not in ("policy", "arena_policy")}
    data.update({
        "slug": campaign.slug, "name": campaign.name, "guideline": "v1", "votes_per_pair": 3, "gold_rate": 0,
        "lease_minutes": 15, "buffer_size": 20, "is_active": "on", "sampling_params": "{}", "judge_settings": "{}",
        "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 1,
        "guidelines-0-id": campaign.guidelines.get().pk, "guidelines-0-campaign": campaign.pk,
        **NO_RETRAIN_POLICY, "retrain_policy-TOTAL_FORMS": 1, "retrain_policy-0-enabled": "on", "retrain_policy-0-kind": "dpo",
        "retrain_policy-0-config": '{"betta": 1}', "retrain_policy-0-every_n_preferences": 100,
        "retrain_policy-0-min_interval_minutes": 30, "retrain_policy-0-data_scope": "on_policy",
    })
    r = c.post(f"/admin/annotation/campaign/{campaign.pk}/change/", data)
    assert r.status_code == 200 and "unknown config key(s) for DPOConfig: betta" in r.content.decode()
    data["retrain_policy-0-config"] = '{"beta": 0.3}'
    r = c.post(f"/admin/annotation/campaign/{campaign.pk}/change/", data)
    assert r.status_code == 302
    policy = RetrainPolicy.objects.get(campaign=campaign)
    assert (policy.kind, policy.config, policy.every_n_preferences, policy.min_interval_minutes) == ("dpo", {"beta": 0.3}, 100, 30)
    assert policy.data_scope == "on_policy"
