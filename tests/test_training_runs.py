"""Training runs from the platform: queued from a campaign's preferences, trained by the gpu
task's code (tiny local model, in this process), metrics stored, output registered as a new
ModelVersion that can then be sampled from: the loop closed once."""

import pytest

from annotation import services
from annotation.errors import InvalidInput
from annotation.models import ModelVersion, TrainingRun
from tests.factories import CampaignFactory, PromptFactory
from tests.processes import ROOT
from workers import sampling
from workers.training_jobs import run_training

pytestmark = pytest.mark.timeout(600)

SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1, "lr": 1e-3}


@pytest.fixture
def campaign(db, settings, tiny_policy, tmp_path):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    c = CampaignFactory(sampling_params={"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "top_p": 1.0})
    lines = (ROOT / "fixtures" / "tests" / "trl_mixed.jsonl").read_text().splitlines()
    report = services.preferences_import(campaign=c, lines=list(enumerate(lines, start=1)), fmt="trl")
    assert report.created >= 3
    return c


def test_dpo_run_registers_a_new_policy_version_that_samples(campaign, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL)
    assert len(enqueued) == 1 and run.status == "queued"
    base = ModelVersion.objects.get(pk=run.base_version_id)
    assert run_training(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.started_at and run.finished_at and run.device == "cpu"
    assert run.data_manifest["rows"] >= 3 and len(run.data_manifest["sha256"]) == 64
    losses = [m["loss"] for m in run.metrics if "loss" in m]
    assert len(losses) == 2 and losses[0] == pytest.approx(0.6931, abs=1e-3)
    new = ModelVersion.objects.get(training_run=run)
    assert new.parent == base and new.kind == "policy" and new.name == f"{base.name}+dpo-{run.pk}"
    # The new version is a policy the platform can sample from.
    campaign.policy = new
    campaign.save()
    PromptFactory(campaign=campaign)
    report = sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=1, seed=0)
    assert report.created == 1 and report.policy == new.name


def test_reward_run_registers_a_reward_model(campaign):
    run = services.training_run_create(campaign=campaign, kind="reward", config=SMALL)
    assert run_training(run_id=run.pk) == "succeeded"
    assert ModelVersion.objects.get(training_run=run).kind == "reward"


def test_a_redelivered_run_resumes_and_non_finite_metrics_are_stored_as_null(campaign):
    run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL)
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={})  # the first worker died here
    services.training_run_log(run_id=run.pk, metrics={"loss": float("nan"), "step": 0})
    assert run_training(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.metrics[0] == {"loss": None, "step": 0} and run.status == "succeeded"


def test_bad_config_fails_the_run_with_the_reason_and_registers_nothing(campaign):
    run = services.training_run_create(campaign=campaign, kind="dpo", config={"betta": 0.1})
    assert run_training(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and "unknown config key(s) for DPOConfig: betta" in run.error
    assert not ModelVersion.objects.filter(training_run=run).exists()
    with pytest.raises(InvalidInput):
        services.training_run_create(campaign=campaign, kind="ppo-ish", config={})


def test_cancelled_run_does_not_start_or_stops_between_steps(campaign):
    run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL)
    services.training_run_cancel(run_id=run.pk)
    assert run_training(run_id=run.pk) == "cancelled"
    run = services.training_run_create(campaign=campaign, kind="dpo", config={**SMALL, "max_steps": 50})
    original = services.training_run_log

    def log_then_cancel(*, run_id, metrics):  # an admin cancels while the run trains
        original(run_id=run_id, metrics=metrics)
        services.training_run_cancel(run_id=run_id)

    services.training_run_log = log_then_cancel
    try:
        assert run_training(run_id=run.pk) == "cancelled"
    finally:
        services.training_run_log = original
    run.refresh_from_db()
    assert run.status == "cancelled" and len(run.metrics) == 1
    assert not ModelVersion.objects.filter(training_run=run).exists()
