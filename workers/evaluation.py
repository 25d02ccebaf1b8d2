"""Run a queued Evaluation: the glue between ``annotation`` (which prompts, which versions,
where the figures go, the gate) and ``training.evaluation`` (the model work).

Policies come from the sampler's per-process cache (``workers.sampling.policy_load``); the
reward model from a one-slot cache of its own. The KL reference is the candidate's root
ancestor (the original model the loop started from), so KL grows with the loop's drift and is
comparable between rounds; the judge is the campaign's latest successful reward run's version.
"""

from __future__ import annotations

import logging
import traceback

from annotation import selectors, services
from annotation.models import Evaluation
from training.params import SamplingParams

logger = logging.getLogger(__name__)

NO_REWARD_MODEL = "no reward model for this campaign: train one (kind=reward) first"
NO_EVAL_PROMPTS = "no eval-split prompts in this campaign: import prompts with split=eval first"

_REWARD: dict[str, tuple] = {}  # spec -> (model, tokenizer); one at a time


def reward_load(spec: str):
    """(model, tokenizer) of a reward model, kept loaded between tasks in this worker process."""
    if spec not in _REWARD:
        from training.reward import load_reward_model

        _REWARD.clear()
        logger.info("loading reward model %s", spec)
        _REWARD[spec] = load_reward_model(spec)
    return _REWARD[spec]


def run_evaluation(*, evaluation_id: int) -> str:
    """Evaluate ``evaluation_id``, store the figures, apply the gate; returns the final status."""
    evaluation = Evaluation.objects.select_related("campaign", "candidate", "baseline").get(pk=evaluation_id)
    if evaluation.status not in Evaluation.ACTIVE:
        return evaluation.status
    campaign = evaluation.campaign
    try:
        params = SamplingParams.from_dict(campaign.sampling_params)
    except ValueError as exc:
        services.evaluation_fail(evaluation_id=evaluation_id, error=f"invalid sampling parameters: {exc}")
        return Evaluation.Status.FAILED
    if services.evaluation_start(evaluation_id=evaluation_id, sampling_params=params.as_dict()) is None:
        return Evaluation.objects.get(pk=evaluation_id).status
    # Imported once it is running (and swept if its worker is lost): a pool child SIGKILLed while
    # still queued is acknowledged as lost and never redelivered, and a queued evaluation is never swept.
    from training.evaluation import evaluate_policy
    from workers.sampling import policy_load

    # The cheap checks first: no model is loaded for an evaluation that cannot run.
    reward = selectors.campaign_reward_model(campaign=campaign)
    prompts = selectors.eval_prompts(campaign=campaign, n=evaluation.max_prompts)
    if reward is None or not prompts:
        services.evaluation_fail(evaluation_id=evaluation_id, error=NO_REWARD_MODEL if reward is None else NO_EVAL_PROMPTS)
        return Evaluation.Status.FAILED
    reference = selectors.model_version_root(version=evaluation.candidate)
    try:
        new_model, new_tok = policy_load(evaluation.candidate.spec)
        active_model, active_tok = policy_load(evaluation.baseline.spec)
        ref_model = policy_load(reference.spec)[0]
        reward_model, reward_tok = reward_load(reward.spec)
        result = evaluate_policy(new_model, new_tok, active_model, active_tok, ref_model, [p.messages for p in prompts],
                                 reward_model, reward_tok, params, evaluation.seed)
    except Exception as exc:  # the record says why, with the traceback's end; the task does not retry
        logger.exception("evaluation %s failed", evaluation_id)
        services.evaluation_fail(evaluation_id=evaluation_id,
                                 error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
        return Evaluation.Status.FAILED
    try:
        evaluation = services.evaluation_finish(evaluation_id=evaluation_id, figures=result.as_dict(),
                                                reference=reference, reward_model=reward)
    except Exception as exc:  # never leave a computed evaluation RUNNING
        logger.exception("evaluation %s: could not store its figures or apply the gate", evaluation_id)
        services.evaluation_fail(evaluation_id=evaluation_id, error=f"computed, but could not be stored: {type(exc).__name__}: {exc}")
        return Evaluation.Status.FAILED
    logger.info("evaluation %s: win rate %.3f [%.3f, %.3f], KL %.3f -> %s (%s)", evaluation_id, evaluation.win_rate or 0,
                evaluation.win_low or 0, evaluation.win_high or 0, evaluation.kl or 0, evaluation.decision, evaluation.decision_reason)
    return Evaluation.Status.SUCCEEDED
