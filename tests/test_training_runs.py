"""Training runs from the platform: queued from a campaign's preferences, trained by the gpu
task's code (tiny local model, in this process), metrics stored, output registered as a new
ModelVersion that can then be sampled from: the loop closed once."""

import pytest

from annotation import selectors, services
from annotation.errors import InvalidInput
from annotation.models import ModelVersion, Preference, TrainingRun
from tests.factories import CampaignFactory, PromptFactory, ResponseFactory
from training.formats import PreferenceRecord
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
    metrics = selectors.training_run_metrics(run=run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 2 and losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert [m["step"] for m in metrics] == [1, 2] and {"learning_rate", "grad_norm", "rewards/accuracies"} <= set(metrics[0])
    assert (run.step, run.total_steps) == (2, 2)  # progress, as the pages and `train --wait` show it
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
    assert selectors.training_run_metrics(run=run)[0] == {"loss": None, "step": 0} and run.status == "succeeded"


def test_bad_config_or_kind_is_refused_before_anything_is_queued(campaign):
    with pytest.raises(InvalidInput, match="unknown config key\\(s\\) for DPOConfig: betta"):
        services.training_run_create(campaign=campaign, kind="dpo", config={"betta": 0.1})
    with pytest.raises(InvalidInput, match="Invalid dpo config: beta: "):
        services.training_run_create(campaign=campaign, kind="dpo", config={"beta": "high"})
    with pytest.raises(InvalidInput, match="unknown training kind 'ppo-ish'; known: sft, reward, dpo"):
        services.training_run_create(campaign=campaign, kind="ppo-ish", config={})
    with pytest.raises(InvalidInput, match="cannot set 'model'"):
        services.training_run_create(campaign=campaign, kind="sft", config={"model": "gpt2"})
    assert not TrainingRun.objects.exists()


def test_stored_bad_config_fails_the_run_with_the_reason_and_registers_nothing(campaign):
    # A run row written before its config rules changed: the worker still checks and says why.
    run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL)
    TrainingRun.objects.filter(pk=run.pk).update(config={"betta": 0.1})
    assert run_training(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and "unknown config key(s) for DPOConfig: betta" in run.error
    assert not ModelVersion.objects.filter(training_run=run).exists()


def test_cancelled_run_does_not_start_or_stops_between_steps(campaign):
    run = services.training_run_create(campaign=campaign, kind="dpo", config=SMALL)
    services.training_run_cancel(run_id=run.pk)
    assert run_training(run_id=run.pk) == "cancelled"
    run = services.training_run_create(campaign=campaign, kind="dpo", config={**SMALL, "max_steps": 50})
    original = services.training_run_log

    def log_then_cancel(*, run_id, metrics, step):  # an admin cancels while the run trains
        original(run_id=run_id, metrics=metrics, step=step)
        services.training_run_cancel(run_id=run_id)

    services.training_run_log = log_then_cancel
    try:
        assert run_training(run_id=run.pk) == "cancelled"
    finally:
        services.training_run_log = original
    run.refresh_from_db()
    assert run.status == "cancelled" and len(selectors.training_run_metrics(run=run)) == 1 and run.step == 1
    assert not ModelVersion.objects.filter(training_run=run).exists()


def _unusable_preference(campaign, *, split="train"):
    """A stored preference no trainer can use (its chosen text is blank), e.g. from an old import."""
    prompt = PromptFactory(campaign=campaign, split=split)
    chosen, rejected = ResponseFactory(prompt=prompt, text="   "), ResponseFactory(prompt=prompt)
    return Preference.objects.create(campaign=campaign, prompt=prompt, chosen=chosen, rejected=rejected, source="import")


def test_training_records_hold_out_eval_prompts_and_report_unusable_rows(campaign, django_assert_num_queries):
    n_train = Preference.objects.filter(campaign=campaign).count()
    bad = _unusable_preference(campaign)
    _unusable_preference(campaign, split="eval")  # held out: neither trained on nor reported
    with django_assert_num_queries(1):
        records, problems = selectors.training_records(campaign=campaign)
    assert len(records) == n_train and all(isinstance(r, PreferenceRecord) for r in records)
    assert records[0] == PreferenceRecord(prompt=[{"role": "user", "content": "What is 2+2?"}], chosen="4", rejected="5")
    assert problems == [f"preference {bad.pk}: chosen is empty"]


def test_unusable_rows_go_into_the_data_manifest_and_the_log(campaign, caplog):
    bad = _unusable_preference(campaign)
    run = services.training_run_create(campaign=campaign, kind="sft", config=SMALL)
    assert run_training(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.data_manifest["unusable"] == 1 and run.data_manifest["problems"] == [f"preference {bad.pk}: chosen is empty"]
    assert f"preference {bad.pk}: chosen is empty" in caplog.text


def test_a_campaign_with_only_unusable_rows_fails_the_run_with_the_reason(db, settings, tiny_policy):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy}
    campaign = CampaignFactory()
    bad = _unusable_preference(campaign)
    run = services.training_run_create(campaign=campaign, kind="reward", config=SMALL)
    assert run_training(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.error == f"no training preferences in this campaign yet (1 unusable; the first: preference {bad.pk}: chosen is empty)"
