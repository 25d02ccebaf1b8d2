"""Celery tasks: thin wrappers that take ids and plain values and call services.

Model work (``sample_pairs``) is routed to the ``gpu`` queue (settings.CELERY_TASK_ROUTES);
``workers.sampling`` imports torch only when it runs, so a web process that enqueues tasks
never loads it.
"""

import logging
from datetime import datetime

from celery import shared_task

from annotation import selectors, services

logger = logging.getLogger(__name__)


@shared_task(name="workers.tasks.expire_leases", ignore_result=False, soft_time_limit=60, time_limit=120)
def expire_leases() -> int:
    """Beat, every minute: mark leases past their expiry as expired (they already count as free)."""
    n = services.assignments_expire()
    if n:
        logger.info("expired %d lease(s)", n)
    return n


@shared_task(name="workers.tasks.sample_pairs", ignore_result=False, soft_time_limit=60 * 60, time_limit=60 * 60 + 120)
def sample_pairs(campaign_id: int, n: int, refill_claim: str | None = None) -> dict:
    """Sample ``n`` pairs for a campaign from its active policy (gpu queue). A refill (started
    by ``refill_buffers`` with its claim) samples what is missing when it runs, not when it
    was queued, and releases its own claim at the end, whatever happened. A refill whose claim
    the campaign no longer holds samples nothing: its worker was SIGKILLed, Redis handed the
    message on after the visibility timeout, and a newer refill took the claim over meanwhile
    (both would fill the buffer) or has already filled it and let go."""
    from workers.sampling import campaign_sample_pairs

    claim = datetime.fromisoformat(refill_claim) if refill_claim else None
    try:
        if claim is not None:
            n = selectors.campaign_buffer_missing(campaign_id=campaign_id, claim=claim)
            if n <= 0:
                return {"created": 0, "requested": 0}
        return campaign_sample_pairs(campaign_id=campaign_id, n=n).as_dict()
    finally:
        if claim is not None:
            services.campaign_refill_release(campaign_id=campaign_id, claim=claim)


@shared_task(name="workers.tasks.refill_buffers", ignore_result=False, soft_time_limit=60, time_limit=120)
def refill_buffers() -> dict[int, int]:
    """Beat, every 30 s: for each active campaign below its buffer of open comparisons, enqueue
    one ``sample_pairs`` refill, unless one is already in flight."""
    enqueued = {}
    for campaign_id, missing in selectors.campaigns_to_refill():
        claim = services.campaign_refill_claim(campaign_id=campaign_id)
        if claim is None:
            continue
        try:
            sample_pairs.delay(campaign_id, missing, refill_claim=claim.isoformat())
        except Exception:  # the broker is down: free the claim so the next beat retries
            services.campaign_refill_release(campaign_id=campaign_id, claim=claim)
            raise
        enqueued[campaign_id] = missing
    if enqueued:
        logger.info("refilling buffers: %s", enqueued)
    return enqueued


@shared_task(name="workers.tasks.retrain_due", ignore_result=False, soft_time_limit=60, time_limit=120)
def retrain_due() -> list[int]:
    """Beat, every minute: start a run (trigger ``periodic``) for each campaign whose retrain
    policy is due; once per policy even when two beats run at once. Returns the runs' ids."""
    runs = services.retrain_policies_trigger()
    if runs:
        logger.info("retraining: started run(s) %s", [r.pk for r in runs])
    return [r.pk for r in runs]


@shared_task(name="workers.tasks.judge_pending", ignore_result=False, acks_late=True)
def judge_pending(campaign_id: int, judge_id: int) -> dict:
    """Let a campaign's AI judge vote on every comparison it has not voted on (the gpu queue for
    local and reward judges, the default queue for endpoint judges: ``annotation.enqueue``).
    A second delivery judges only what is still pending."""
    from annotation.models import Judge
    from workers.judging import JudgeUnavailable, run_judge

    if not Judge.objects.filter(pk=judge_id, campaign_id=campaign_id, enabled=True).exists():
        return {"skipped": "no such enabled judge in this campaign"}
    try:
        return run_judge(judge_id=judge_id).as_dict()
    except JudgeUnavailable as exc:
        logger.warning("judge %s: %s", judge_id, exc)
        return {"error": str(exc)}


@shared_task(name="workers.tasks.sweep_stale", ignore_result=False, soft_time_limit=60, time_limit=120)
def sweep_stale() -> dict:
    """Beat, every 5 minutes: fail the runs and evaluations a lost worker left running."""
    swept = services.stale_work_fail()
    if swept.runs or swept.evaluations:
        logger.warning("failed stale work: runs %s, evaluations %s", swept.runs, swept.evaluations)
    return {"runs": swept.runs, "evaluations": swept.evaluations}


@shared_task(name="workers.tasks.gpu_train", ignore_result=False, acks_late=True)
def gpu_train(run_id: int) -> str:
    """Run a queued TrainingRun (gpu queue; the default task time limit of 6 h applies)."""
    from workers.training_jobs import run_training

    return run_training(run_id=run_id)


@shared_task(name="workers.tasks.gpu_evaluate", ignore_result=False, acks_late=True, soft_time_limit=2 * 60 * 60,
             time_limit=2 * 60 * 60 + 120)
def gpu_evaluate(evaluation_id: int) -> str:
    """Run a queued Evaluation (gpu queue): sample, judge, store, then the campaign's gate."""
    from workers.evaluation import run_evaluation

    return run_evaluation(evaluation_id=evaluation_id)


@shared_task(name="workers.tasks.chat_complete", ignore_result=False, acks_late=False, soft_time_limit=120, time_limit=150)
def chat_complete(request: dict) -> dict:
    """One ``POST /v1/chat/completions`` (the ``serve`` queue): the web process waits for this
    result (``PREFLOOP_CHAT_TIMEOUT_SECONDS``, 60). Not acked late: a request whose worker died
    is answered with an error by the web side's timeout rather than run twice; limited to two
    minutes, so an abandoned request cannot hold a model worker for long."""
    from workers.serving import chat_complete as complete

    return complete(request)
