"""Sampled pairs in the platform: the policy registry, provenance on every response, the
buffer refill bookkeeping and the ``sample_pairs`` command (tiny local models)."""

import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from annotation import selectors, services
from annotation.errors import InvalidInput
from annotation.models import Campaign, Comparison, ModelVersion, Prompt, Response
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory
from tests.processes import ROOT
from training.params import SamplingParams
from workers import sampling

SMALL = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "batch_size": 4}


@pytest.fixture
def policy_settings(settings, tiny_policy):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy}
    return tiny_policy


@pytest.fixture
def sampled_campaign(db, policy_settings):
    campaign = CampaignFactory(sampling_params=SMALL, buffer_size=5)
    train = [PromptFactory(campaign=campaign) for _ in range(3)]
    PromptFactory(campaign=campaign, split=Prompt.Split.EVAL)
    return campaign, train


def test_sampled_pairs_carry_provenance(sampled_campaign, policy_settings):
    campaign, train = sampled_campaign
    report = sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=4, seed=123)
    assert (report.created, report.dropped, report.seed) == (4, 0, 123)

    campaign.refresh_from_db()
    policy = ModelVersion.objects.get(name=policy_settings)  # registered on first use
    assert campaign.policy == policy and policy.base == policy_settings and policy.parent is None
    comparisons = list(campaign.comparisons.all())
    assert len(comparisons) == 4 and all(c.kind == "normal" and c.status == "open" for c in comparisons)
    # Every training prompt got a pair before any got two; eval prompts none.
    assert {c.prompt_id for c in comparisons} == {p.pk for p in train}
    # Least-covered first (train[0] now has 2 comparisons, the others 1), ties oldest first.
    assert [p.pk for p in selectors.prompts_for_sampling(campaign=campaign, n=4)] == [train[1].pk, train[2].pk, train[0].pk, train[1].pk]
    responses = Response.objects.filter(prompt__campaign=campaign)
    assert responses.count() == 8
    params = SamplingParams.from_dict(SMALL).as_dict()
    for r in responses:
        assert (r.model_version, r.source, r.sampling_params) == (policy, "policy", params)
        assert r.seed is not None and r.text and r.finish_reason in ("stop", "length")
        assert 1 <= r.token_count <= 8 and r.logprob_sum < 0
    for c in comparisons:
        assert c.response_a.text != c.response_b.text
    # (That the sums equal a separate forward pass over the sampled tokens is tested in
    # tests/training/test_sampling.py, where the token ids are at hand.)


def test_same_seed_same_pairs(sampled_campaign):
    campaign, _ = sampled_campaign
    sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=3, seed=7)
    first = sorted((r.prompt_id, r.text) for r in Response.objects.filter(prompt__campaign=campaign))
    Comparison.objects.filter(campaign=campaign).delete()
    Response.objects.filter(prompt__campaign=campaign).delete()
    sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=3, seed=7)
    second = sorted((r.prompt_id, r.text) for r in Response.objects.filter(prompt__campaign=campaign))
    assert first == second


def test_arena_mode_pairs_policy_against_another_version(sampled_campaign, tiny_policy_other):
    campaign, _ = sampled_campaign
    base = services.campaign_policy_ensure(campaign=campaign)
    other = ModelVersion.objects.create(name="tiny-v2", base=base.base, parent=base, artifact_path=tiny_policy_other)
    assert other.spec == tiny_policy_other and base.spec == base.base
    campaign.arena_policy = other
    campaign.save()
    report = sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=3, seed=5)
    assert report.created == 3 and report.arena_policy == "tiny-v2"
    for c in campaign.comparisons.all():
        assert c.response_a.model_version == base and c.response_b.model_version == other


def test_campaign_without_training_prompts_samples_nothing(db, policy_settings):
    campaign = CampaignFactory(sampling_params=SMALL)
    PromptFactory(campaign=campaign, split=Prompt.Split.EVAL)
    report = sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=2)
    assert report.created == 0 and not campaign.comparisons.exists()


def test_campaigns_to_refill(db):
    due = CampaignFactory(buffer_size=5)
    PromptFactory(campaign=due)
    ComparisonFactory(campaign=due)
    ComparisonFactory(campaign=due, status=Comparison.Status.COMPLETE, vote_count=3)  # not in the buffer
    full = CampaignFactory(buffer_size=1)
    PromptFactory(campaign=full)
    ComparisonFactory(campaign=full)
    off = CampaignFactory(buffer_size=0)
    PromptFactory(campaign=off)
    inactive = CampaignFactory(is_active=False)
    PromptFactory(campaign=inactive)
    no_train = CampaignFactory()
    PromptFactory(campaign=no_train, split=Prompt.Split.EVAL)
    assert selectors.campaigns_to_refill() == [(due.pk, 4)]


def test_refill_claim_is_exclusive_until_released_or_stale(db):
    c = CampaignFactory()
    first = services.campaign_refill_claim(campaign_id=c.pk)
    assert first is not None
    assert services.campaign_refill_claim(campaign_id=c.pk) is None
    services.campaign_refill_release(campaign_id=c.pk, claim=first)
    second = services.campaign_refill_claim(campaign_id=c.pk)
    assert second is not None
    later = timezone.now() + timedelta(minutes=61)  # the worker holding it died
    third = services.campaign_refill_claim(campaign_id=c.pk, now=later)
    assert third == later
    services.campaign_refill_release(campaign_id=c.pk, claim=second)  # the stale holder finishing late
    assert services.campaign_refill_claim(campaign_id=c.pk) is None  # does not free the newer claim


def test_refill_task_enqueues_once_per_campaign(db, monkeypatch):
    from workers import tasks

    c = CampaignFactory(buffer_size=3)
    PromptFactory(campaign=c)
    sent = []
    # Only the enqueue is replaced (the broker round trip is covered by test_workers).
    monkeypatch.setattr(tasks.sample_pairs, "delay", lambda *a, **kw: sent.append((a, kw)))
    assert tasks.refill_buffers() == {c.pk: 3}
    assert tasks.refill_buffers() == {}  # claim still held: no second refill in flight
    assert len(sent) == 1 and sent[0][0] == (c.pk, 3) and set(sent[0][1]) == {"refill_claim"}


def test_refill_samples_what_is_missing_when_it_runs_and_frees_its_claim(sampled_campaign):
    from workers import tasks

    campaign, _ = sampled_campaign  # buffer_size 5
    claim = services.campaign_refill_claim(campaign_id=campaign.pk)
    sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=3, seed=1)  # filled meanwhile by hand
    result = tasks.sample_pairs(campaign.pk, 5, refill_claim=claim.isoformat())  # queued for 5, 2 missing now
    assert result["created"] == 2 and campaign.comparisons.count() == 5
    assert services.campaign_refill_claim(campaign_id=campaign.pk) is not None  # released
    assert tasks.sample_pairs(campaign.pk, 5, refill_claim=timezone.now().isoformat()) == {"created": 0, "requested": 0}


def test_invalid_sampling_params_are_refused(db):
    with pytest.raises(ValidationError, match="unknown sampling parameter"):
        services.campaign_create(slug="x", name="X", guideline="g", sampling_params={"temp": 1})
    with pytest.raises(ValidationError, match="temperature must be a number"):
        services.campaign_create(slug="x", name="X", guideline="g", sampling_params={"temperature": "hot"})
    assert not Campaign.objects.filter(slug="x").exists()


def test_sampled_pairs_for_a_foreign_prompt_change_nothing(sampled_campaign):
    campaign, train = sampled_campaign
    foreign = PromptFactory()
    policy = services.campaign_policy_ensure(campaign=campaign)

    class S:
        text, token_count, finish_reason, logprob_sum, seed = "x", 1, "stop", -1.0, 0

    class T(S):
        text = "y"

    with pytest.raises(InvalidInput, match="does not belong"):
        services.comparisons_create_sampled(
            campaign=campaign, prompts=[train[0], foreign], pairs=[(S, T), (S, T)], policy=policy, sampling_params={}
        )
    assert not Response.objects.exists() and not Comparison.objects.exists()


def test_register_base_is_idempotent(db):
    a = services.model_version_register_base(spec="HuggingFaceTB/SmolLM2-360M-Instruct")
    assert services.model_version_register_base(spec="HuggingFaceTB/SmolLM2-360M-Instruct") == a
    with pytest.raises(InvalidInput):
        services.model_version_register_base(spec="  ")


def test_sample_pairs_command(sampled_campaign, capsys):
    campaign, _ = sampled_campaign
    call_command("sample_pairs", campaign=campaign.slug, n=2, seed=1)
    assert "2 pair(s) sampled" in capsys.readouterr().out
    assert campaign.comparisons.count() == 2
    call_command("sample_pairs", campaign=campaign.slug, n=2, top_up=True)
    assert "already has 2 open comparisons" in capsys.readouterr().out
    call_command("sample_pairs", campaign=campaign.slug, n=3, top_up=True, seed=2)
    assert campaign.comparisons.count() == 3
    with pytest.raises(CommandError, match="No campaign"):
        call_command("sample_pairs", campaign="nope", n=1)


def test_sample_pairs_command_reports_a_missing_model(db, settings, tmp_path):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": str(tmp_path / "no-such-model")}
    campaign = CampaignFactory(sampling_params=SMALL)
    PromptFactory(campaign=campaign)
    with pytest.raises(CommandError):
        call_command("sample_pairs", campaign=campaign.slug, n=1)
    assert not campaign.comparisons.exists()


def test_web_process_never_imports_torch():
    code = (
        "import sys, django; django.setup(); "
        "import webapp.urls, annotation.api, annotation.views, annotation.admin, workers.tasks, workers.sampling; "
        "from django.test import Client; Client().get('/accounts/login/'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
