"""Evaluations on the platform: a policy run's success queues one; the gpu task (called here,
in-process, on tiny models) samples the eval prompts from both policies, judges them with the
campaign's reward model, stores the figures and applies the gate; the refusals and failures
say why; ``manage.py evaluate`` queues one and follows it."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from annotation import selectors, services
from annotation.errors import Conflict, InvalidInput
from annotation.management.commands import evaluate as evaluate_command
from annotation.models import Campaign, Evaluation, ModelVersion, PolicyPromotion, Prompt
from tests.factories import CampaignFactory, PromptFactory
from tests.processes import ROOT
from workers import tasks
from workers.evaluation import NO_EVAL_PROMPTS, NO_REWARD_MODEL
from workers.training_jobs import run_training

pytestmark = pytest.mark.timeout(600)

SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1, "lr": 1e-3}



@pytest.fixture
def campaign(db, settings, tiny_policy, tmp_path, sent):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    c = CampaignFactory(slug="ev", sampling_params={"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "top_p": 1.0})
    lines = (ROOT / "fixtures" / "tests" / "trl_mixed.jsonl").read_text().splitlines()
    assert services.preferences_import(campaign=c, lines=list(enumerate(lines, start=1)), fmt="trl").created >= 3
    for text in ("Name a colour.", "What is 3+4?", "Say something kind.", "Write a haiku about rain."):
        PromptFactory(campaign=c, split=Prompt.Split.EVAL, messages=[{"role": "user", "content": text}])
    return c


def gate(campaign, min_win_rate, max_kl=None, min_prompts=1) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(gate_min_win_rate=min_win_rate, gate_max_kl=max_kl, gate_min_prompts=min_prompts)
    campaign.refresh_from_db()


def train(campaign, kind: str) -> ModelVersion:
    run = services.training_run_create(campaign=campaign, kind=kind, config=SMALL)
    assert run_training(run_id=run.pk) == "succeeded"
    return ModelVersion.objects.get(training_run=run)


def dpo_then_evaluation(campaign, capture) -> tuple[ModelVersion, Evaluation]:
    with capture(execute=True):
        candidate = train(campaign, "dpo")
    evaluation = Evaluation.objects.get(candidate=candidate)
    return candidate, evaluation


def test_a_policy_run_queues_its_evaluation_which_promotes_through_the_gate(campaign, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reward = train(campaign, "reward")
    assert not Evaluation.objects.exists()  # a reward model is not a policy: nothing to evaluate
    gate(campaign, 0.0)
    base = services.campaign_policy_ensure(campaign=campaign)
    candidate, evaluation = dpo_then_evaluation(campaign, django_capture_on_commit_callbacks)
    assert sent[-1] == ("workers.tasks.gpu_evaluate", [evaluation.pk])
    assert (evaluation.status, evaluation.trigger, evaluation.baseline, evaluation.created_by) == ("queued", "run", base, None)

    assert tasks.gpu_evaluate(evaluation.pk) == "succeeded"  # the gpu task's code, here
    e = Evaluation.objects.get(pk=evaluation.pk)
    assert (e.status, e.reward_model, e.reference, e.n_prompts) == ("succeeded", reward, base, 4)
    assert e.wins + e.ties + e.losses == 4 and e.win_rate == pytest.approx((e.wins + e.ties / 2) / 4)
    assert 0 <= e.win_low <= e.win_rate <= e.win_high <= 1 and e.kl is not None
    assert 1 <= e.mean_length_new <= 6 and 1 <= e.mean_length_active <= 6
    assert 0 <= e.distinct2_new <= 1 and 0 <= e.distinct2_active <= 1
    assert len(e.examples) == 4 and e.examples[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert e.sampling_params["max_new_tokens"] == 6 and e.started_at and e.finished_at
    # The gate (min win rate 0, no KL limit) promoted it, recorded as by nobody, with the figures.
    campaign.refresh_from_db()
    promotion = PolicyPromotion.objects.get()
    assert (e.decision, e.promotion, campaign.policy) == ("promoted", promotion, candidate)
    assert (promotion.from_version, promotion.to_version, promotion.by) == (base, candidate, None)
    assert promotion.reason == f"gate: win rate {e.win_rate:.3g} ≥ 0, KL {e.kl:.3g} (no limit) (evaluation {e.pk})"
    # A task delivered again finds it finished and changes nothing.
    assert tasks.gpu_evaluate(evaluation.pk) == "succeeded" and PolicyPromotion.objects.count() == 1


def test_an_impossible_gate_holds_and_the_same_seed_gives_the_same_figures(campaign, django_capture_on_commit_callbacks):
    train(campaign, "reward")
    gate(campaign, 1.0, 5.0, min_prompts=1000)
    candidate, evaluation = dpo_then_evaluation(campaign, django_capture_on_commit_callbacks)
    assert tasks.gpu_evaluate(evaluation.pk) == "succeeded"
    e = Evaluation.objects.get(pk=evaluation.pk)
    campaign.refresh_from_db()
    assert e.decision == "held" and e.promotion is None and campaign.policy == e.baseline
    assert e.decision_reason.startswith(f"gate not met: {e.n_prompts} eval prompts < 1000") and not PolicyPromotion.objects.exists()
    # On demand, same seed: the same figures (seeded sampling, deterministic judge); no gate now.
    gate(campaign, None)
    again = services.evaluation_create(campaign=campaign, candidate=candidate, seed=e.seed)
    tasks.gpu_evaluate(again.pk)
    again.refresh_from_db()
    assert (again.decision, again.trigger) == ("no_gate", "shell")
    for name in ("wins", "ties", "losses", "win_rate", "mean_length_new", "mean_length_active", "distinct2_new"):
        assert getattr(again, name) == getattr(e, name), name
    assert again.kl == pytest.approx(e.kl, abs=1e-4)


def test_no_reward_model_or_no_eval_prompts_fail_with_the_reason(campaign, django_capture_on_commit_callbacks):
    _, evaluation = dpo_then_evaluation(campaign, django_capture_on_commit_callbacks)
    assert tasks.gpu_evaluate(evaluation.pk) == "failed"
    evaluation.refresh_from_db()
    assert (evaluation.status, evaluation.error) == ("failed", NO_REWARD_MODEL)
    assert evaluation.error == "no reward model for this campaign: train one (kind=reward) first"
    train(campaign, "reward")
    Prompt.objects.filter(campaign=campaign, split="eval").update(split="train")
    again = services.evaluation_create(campaign=campaign, candidate=evaluation.candidate)
    assert tasks.gpu_evaluate(again.pk) == "failed"
    again.refresh_from_db()
    assert again.error == NO_EVAL_PROMPTS and again.finished_at


def test_create_refuses_what_cannot_be_evaluated(campaign, tiny_policy_other):
    base = services.campaign_policy_ensure(campaign=campaign)
    with pytest.raises(InvalidInput, match="is the active policy"):
        services.evaluation_create(campaign=campaign, candidate=base)
    reward = ModelVersion.objects.create(name="rm", kind="reward", base=base.base, parent=base)
    with pytest.raises(InvalidInput, match="only a policy can be evaluated"):
        services.evaluation_create(campaign=campaign, candidate=reward)
    other = services.model_version_register_base(spec=tiny_policy_other)
    with pytest.raises(InvalidInput, match="max_prompts"):
        services.evaluation_create(campaign=campaign, candidate=other, max_prompts=0)
    first = services.evaluation_create(campaign=campaign, candidate=other)
    with pytest.raises(Conflict, match=f"evaluation {first.pk}"):
        services.evaluation_create(campaign=campaign, candidate=other)
    assert Evaluation.objects.count() == 1


def _finish(evaluation, **figures):
    base = {"n_prompts": 10, "wins": 6, "ties": 0, "losses": 4, "win_rate": 0.6, "win_low": 0.31, "win_high": 0.83, "kl": 0.8,
            "mean_length_new": 20, "mean_length_active": 22, "distinct2_new": 0.9, "distinct2_active": 0.9, "examples": []}
    return services.evaluation_finish(evaluation_id=evaluation.pk, figures={**base, **figures},
                                      reference=evaluation.baseline, reward_model=evaluation.baseline)


@pytest.mark.parametrize("min_win, max_kl, kl, decision, reason, min_prompts", [
    (None, None, 0.8, "no_gate", "the campaign has no gate: an admin decides", 1),
    (0.55, 5.0, 0.8, "promoted", "gate: win rate 0.6 ≥ 0.55, KL 0.8 ≤ 5", 10),
    (0.55, 5.0, 0.8, "held", "gate not met: 10 eval prompts < 11; an admin decides", 11),
    (0.65, 5.0, 0.8, "held", "gate not met: 10 eval prompts < 16, win rate 0.6 < 0.65; an admin decides", 16),
    (0.55, 5.0, 0.8, "promoted", "gate: win rate 0.6 ≥ 0.55, KL 0.8 ≤ 5", 1),
    (0.55, None, 0.8, "promoted", "gate: win rate 0.6 ≥ 0.55, KL 0.8 (no limit)", 1),
    (0.65, 5.0, 0.8, "held", "gate not met: win rate 0.6 < 0.65; an admin decides", 1),
    (0.55, 0.5, 0.8, "held", "gate not met: KL 0.8 > 0.5; an admin decides", 1),
    (0.55, 0.5, float("nan"), "held", "gate not met: KL is not finite; an admin decides", 1),
])
def test_gate_decisions(campaign, tiny_policy_other, min_win, max_kl, kl, decision, reason, min_prompts):
    gate(campaign, min_win, max_kl, min_prompts)
    other = services.model_version_register_base(spec=tiny_policy_other)
    e = _finish(services.evaluation_create(campaign=campaign, candidate=other), kl=kl)
    campaign.refresh_from_db()
    assert (e.decision, e.decision_reason, e.status) == (decision, reason, "succeeded")
    assert (campaign.policy == other) == (decision == "promoted")


def test_the_gate_holds_when_the_active_policy_changed_meanwhile(campaign, tiny_policy_other, tiny_policy):
    gate(campaign, 0.0)
    other = services.model_version_register_base(spec=tiny_policy_other)
    evaluation = services.evaluation_create(campaign=campaign, candidate=other)
    third = ModelVersion.objects.create(name="third", base=tiny_policy)
    services.campaign_policy_promote(campaign=campaign, version=third, user=None)
    e = _finish(evaluation)
    campaign.refresh_from_db()
    assert e.decision == "held" and "the active policy changed while it ran" in e.decision_reason and campaign.policy == third


def test_selectors_reward_model_root_and_eval_prompts(campaign, tiny_policy_other):
    base = services.campaign_policy_ensure(campaign=campaign)
    child = ModelVersion.objects.create(name="child", base=base.base, parent=base)
    grandchild = ModelVersion.objects.create(name="grandchild", base=base.base, parent=child)
    assert selectors.model_version_root(version=grandchild) == base == selectors.model_version_root(version=base)
    assert selectors.campaign_reward_model(campaign=campaign) is None
    assert [p.messages[0]["content"] for p in selectors.eval_prompts(campaign=campaign, n=2)] == ["Name a colour.", "What is 3+4?"]


# ---------------------------------------------------------------- manage.py evaluate


def evaluate(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("evaluate", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_queues_and_waits_for_the_figures(campaign, tiny_policy_other, monkeypatch):
    other = services.model_version_register_base(spec=tiny_policy_other)
    with pytest.raises(CommandError, match="No model version 'nope'"):
        evaluate("--campaign", "ev", "--version", "nope")
    with pytest.raises(CommandError, match="is the active policy"):
        evaluate("--campaign", "ev", "--version", services.campaign_policy_ensure(campaign=campaign).name)
    out, _ = evaluate("--campaign", "ev", "--version", other.name, "--seed", "7")
    e = Evaluation.objects.get()
    assert (e.seed, e.trigger, e.status) == (7, "shell", "queued") and out.startswith(f"Evaluation {e.pk} queued: {other.name} vs ")
    e.delete()
    monkeypatch.setattr(evaluate_command, "_pause", lambda s: _finish(Evaluation.objects.get()))  # a worker, in one poll
    out, _ = evaluate("--campaign", "ev", "--version", other.name, "--wait", "--poll", "0")
    assert "win rate 0.600 (95% CI 0.310-0.830; 6 won, 0 tied, 4 lost)" in out and "gate: no_gate" in out
    monkeypatch.setattr(evaluate_command, "_pause", lambda s: services.evaluation_fail(
        evaluation_id=Evaluation.objects.get(status="queued").pk, error=NO_REWARD_MODEL))
    with pytest.raises(CommandError, match=re.escape(f"failed: {NO_REWARD_MODEL}")):
        evaluate("--campaign", "ev", "--version", other.name, "--wait")
