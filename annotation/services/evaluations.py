"""Evaluations of policy versions: queued here (after a policy run succeeds, or on demand),
started, failed or finished by the gpu worker's task; finishing applies the campaign's gate."""

from __future__ import annotations

import math
import secrets

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import enqueue
from annotation.errors import Conflict, InvalidInput, NotFound
from annotation.limits import DEFAULT_EVAL_PROMPTS, MAX_EVAL_PROMPTS, MAX_PROMOTION_REASON_CHARS, MAX_RUN_ERROR_CHARS
from annotation.models import Campaign, Evaluation, ModelVersion, PolicyPromotion
from annotation.services.promotions import campaign_policy_promote
from annotation.services.sampling import campaign_policy_ensure
from training.seeds import SEED_BITS

FIGURES = ("n_prompts", "wins", "ties", "losses", "win_rate", "win_low", "win_high", "kl", "mean_length_new",
           "mean_length_active", "distinct2_new", "distinct2_active")


def evaluation_create(
    *,
    campaign: Campaign,
    candidate: ModelVersion,
    created_by: AbstractBaseUser | None = None,
    trigger: str = Evaluation.Trigger.SHELL,
    seed: int | None = None,
    max_prompts: int | None = None,
) -> Evaluation:
    """Queue an evaluation of ``candidate`` against the campaign's active policy (the
    baseline, fixed now) on the gpu workers, after the commit. One queued or running
    evaluation per campaign and candidate (a database constraint): a second is a Conflict."""
    if trigger not in Evaluation.Trigger.values:
        raise InvalidInput(f"Unknown trigger {trigger!r}; known: {', '.join(Evaluation.Trigger.values)}.", details={"field": "trigger"})
    if candidate.kind != ModelVersion.Kind.POLICY:
        raise InvalidInput(f"'{candidate.name}' is a {candidate.kind} model; only a policy can be evaluated.", details={"field": "candidate"})
    max_prompts = DEFAULT_EVAL_PROMPTS if max_prompts is None else max_prompts
    if not 1 <= max_prompts <= MAX_EVAL_PROMPTS:
        raise InvalidInput(f"max_prompts must be in [1, {MAX_EVAL_PROMPTS}].", details={"field": "max_prompts"})
    if seed is None:
        seed = secrets.randbits(SEED_BITS)
    elif not 0 <= seed < 2**SEED_BITS:
        raise InvalidInput(f"seed must be in [0, 2**{SEED_BITS}).", details={"field": "seed"})
    user = created_by if created_by is not None and created_by.is_authenticated else None
    with transaction.atomic():
        baseline = campaign_policy_ensure(campaign=campaign)
        if baseline.pk == candidate.pk:
            raise InvalidInput(f"'{candidate.name}' is the active policy of '{campaign.slug}': there is nothing to compare it with.",
                               details={"field": "candidate"})
        try:
            with transaction.atomic():  # a savepoint: a caller's transaction survives the refusal
                evaluation = Evaluation.objects.create(
                    campaign=campaign, candidate=candidate, baseline=baseline, trigger=trigger, created_by=user,
                    seed=seed, max_prompts=max_prompts,
                )
        except IntegrityError:
            active = Evaluation.objects.filter(campaign=campaign, candidate=candidate, status__in=Evaluation.ACTIVE)
            active_id = active.values_list("pk", flat=True).first()
            if active_id is None:
                raise
            raise Conflict(f"'{candidate.name}' already has an evaluation queued or running in '{campaign.slug}' "
                           f"(evaluation {active_id}).", details={"evaluation_id": active_id}) from None
        transaction.on_commit(lambda: enqueue.gpu_evaluate(evaluation.pk))
    return evaluation


def evaluation_start(*, evaluation_id: int, sampling_params: dict) -> Evaluation | None:
    """Mark a queued evaluation running (a running one stays running: its task was
    redelivered); None when it has finished already."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().filter(pk=evaluation_id).first()
        if evaluation is None or evaluation.status not in Evaluation.ACTIVE:
            return None
        evaluation.status, evaluation.sampling_params = Evaluation.Status.RUNNING, sampling_params
        evaluation.started_at = evaluation.started_at or timezone.now()
        evaluation.save(update_fields=["status", "sampling_params", "started_at"])
    return evaluation


def evaluation_fail(*, evaluation_id: int, error: str) -> Evaluation:
    """Close an evaluation as failed with why."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().filter(pk=evaluation_id).first()
        if evaluation is None:
            raise NotFound(f"No evaluation {evaluation_id}.")
        if evaluation.status not in Evaluation.ACTIVE:
            return evaluation  # a second delivery of the task: the first one's outcome stands
        evaluation.status, evaluation.error, evaluation.finished_at = Evaluation.Status.FAILED, error[:MAX_RUN_ERROR_CHARS], timezone.now()
        evaluation.save(update_fields=["status", "error", "finished_at"])
    return evaluation


def evaluation_cancel(*, evaluation_id: int) -> Evaluation:
    """Cancel a queued or running evaluation: its worker's figures, when they come, are not
    stored and the gate is not applied. Cancelling a cancelled one changes nothing; a finished
    one is a Conflict."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().filter(pk=evaluation_id).first()
        if evaluation is None:
            raise NotFound(f"No evaluation {evaluation_id}.")
        if evaluation.status in (Evaluation.Status.SUCCEEDED, Evaluation.Status.FAILED):
            raise Conflict(f"Evaluation {evaluation_id} already {evaluation.status}; there is nothing to cancel.",
                           details={"status": evaluation.status})
        if evaluation.status in Evaluation.ACTIVE:
            evaluation.status, evaluation.finished_at = Evaluation.Status.CANCELLED, timezone.now()
            evaluation.save(update_fields=["status", "finished_at"])
    return evaluation


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def gate_check(*, win_rate: float | None, kl: float | None, min_win_rate: float | None, max_kl: float | None,
               n_prompts: int = 0, min_prompts: int = 0) -> tuple[str, str]:
    """(decision, reason): ``promoted`` when win_rate ≥ min_win_rate, (no KL limit or
    kl ≤ max_kl) and n_prompts ≥ min_prompts, ``held`` otherwise, ``no_gate`` when there is no
    minimum win rate."""
    if min_win_rate is None:
        return Evaluation.Decision.NO_GATE, "the campaign has no gate: an admin decides"
    fails = []
    if n_prompts < min_prompts:
        fails.append(f"{n_prompts} eval prompts < {min_prompts}")
    if win_rate is None or not win_rate >= min_win_rate:
        fails.append(f"win rate {win_rate:.3g} < {min_win_rate:.3g}" if win_rate is not None else "no win rate")
    if max_kl is not None and (kl is None or not kl <= max_kl):
        fails.append(f"KL {kl:.3g} > {max_kl:.3g}" if kl is not None else "KL is not finite")
    if fails:
        return Evaluation.Decision.HELD, "gate not met: " + ", ".join(fails) + "; an admin decides"
    kl_part = f"KL {kl:.3g} ≤ {max_kl:.3g}" if max_kl is not None else f"KL {kl:.3g} (no limit)" if kl is not None else "KL n/a (no limit)"
    return Evaluation.Decision.PROMOTED, f"gate: win rate {win_rate:.3g} ≥ {min_win_rate:.3g}, {kl_part}"


def evaluation_finish(*, evaluation_id: int, figures: dict, reference: ModelVersion, reward_model: ModelVersion) -> Evaluation:
    """Store the figures (``training.evaluation.EvalResult.as_dict()``; NaN / ±inf as null),
    then apply the campaign's gate: promote the candidate (by nobody, the reason naming the
    figures) or hold it. The gate holds, whatever the figures, when the campaign's active
    policy is no longer the baseline: the comparison is stale."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().select_related("candidate").get(pk=evaluation_id)
        if evaluation.status not in Evaluation.ACTIVE:
            return evaluation  # a second delivery of the task: the first one's outcome (and gate) stands
        campaign = Campaign.objects.select_for_update().get(pk=evaluation.campaign_id)
        for name in FIGURES:
            setattr(evaluation, name, _number(figures.get(name)) if name not in ("n_prompts", "wins", "ties", "losses")
                    else int(figures.get(name) or 0))
        evaluation.examples = figures.get("examples") or []
        evaluation.reference, evaluation.reward_model = reference, reward_model
        evaluation.status, evaluation.finished_at = Evaluation.Status.SUCCEEDED, timezone.now()
        decision, reason = gate_check(win_rate=evaluation.win_rate, kl=evaluation.kl,
                                      min_win_rate=campaign.gate_min_win_rate, max_kl=campaign.gate_max_kl,
                                      n_prompts=evaluation.n_prompts, min_prompts=campaign.gate_min_prompts)
        if decision == Evaluation.Decision.PROMOTED and campaign.policy_id != evaluation.baseline_id:
            decision, reason = Evaluation.Decision.HELD, (
                "the active policy changed while it ran (it no longer is the baseline): evaluate again; an admin decides")
        if decision == Evaluation.Decision.PROMOTED:
            evaluation.promotion = campaign_policy_promote(campaign=campaign, version=evaluation.candidate, user=None,
                                                           reason=f"{reason} (evaluation {evaluation.pk})")
        evaluation.decision, evaluation.decision_reason = decision, reason
        evaluation.save()
    return evaluation


def _figures(evaluation: Evaluation) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3g}"

    return f"win rate {f(evaluation.win_rate)} [{f(evaluation.win_low)}, {f(evaluation.win_high)}], KL {f(evaluation.kl)}"


def evaluation_promote(*, evaluation: Evaluation, user: AbstractBaseUser | None, note: str = "") -> PolicyPromotion:
    """An admin's decision on an evaluation the gate left to them (``held`` or ``no_gate``):
    make its candidate the campaign's active policy, recorded with who and a reason naming the
    evaluation and its figures. Anything else (not finished, already promoted by the gate,
    the candidate active already) is a Conflict."""
    if evaluation.status != Evaluation.Status.SUCCEEDED:
        raise Conflict(f"Evaluation {evaluation.pk} is {evaluation.status}: only a finished evaluation can promote.")
    if evaluation.decision not in (Evaluation.Decision.HELD, Evaluation.Decision.NO_GATE):
        raise Conflict(f"Evaluation {evaluation.pk} was decided by the gate ({evaluation.decision}): there is nothing to decide.")
    reason = f"evaluation {evaluation.pk}: {note.strip() or 'promoted from the evaluation page'} ({_figures(evaluation)})"
    return campaign_policy_promote(campaign=evaluation.campaign, version=evaluation.candidate, user=user,
                                   reason=reason[:MAX_PROMOTION_REASON_CHARS])
