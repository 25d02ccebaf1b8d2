"""Periodic retraining: the beat task ``retrain_due`` starts a run (trigger ``periodic``) for
each enabled retrain policy that is due (``selectors.retrain_policy_check``).

It fires once under concurrent beats: each policy row is locked, ``FOR UPDATE SKIP LOCKED``,
in the transaction that checks and creates, so a second beat passes over a policy the first
is deciding on and, once that commits, sees its run; the one-active-run constraint backs it."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from annotation import selectors
from annotation.errors import Conflict, InvalidInput
from annotation.models import RetrainPolicy, TrainingRun
from annotation.services.training_runs import training_run_create

logger = logging.getLogger(__name__)


def retrain_policies_trigger(*, now: datetime | None = None) -> list[TrainingRun]:
    """Start a run for every due policy of an active campaign; returns the runs started."""
    ids = RetrainPolicy.objects.filter(enabled=True, campaign__is_active=True).order_by("pk").values_list("pk", flat=True)
    runs = [retrain_policy_trigger(policy_id=pk, now=now) for pk in ids]
    return [run for run in runs if run is not None]


def retrain_policy_trigger(*, policy_id: int, now: datetime | None = None) -> TrainingRun | None:
    """Start the policy's run if it is due; None when it is not, is switched off, or another
    beat holds it right now."""
    now = now or timezone.now()
    with transaction.atomic():
        policy = (
            RetrainPolicy.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("campaign")
            .filter(pk=policy_id, enabled=True, campaign__is_active=True)
            .first()
        )
        if policy is None:
            return None
        check = selectors.retrain_policy_check(policy=policy, now=now)
        if not check.due:
            return None
        try:
            run = training_run_create(
                campaign=policy.campaign, kind=policy.kind, config=policy.config, trigger=TrainingRun.Trigger.PERIODIC,
                data_scope=policy.data_scope,
            )
        except Conflict:  # a run of this kind was started by someone else meanwhile
            return None
        except InvalidInput as exc:  # a stored config the trainer's rules no longer accept
            logger.warning("retrain policy of campaign %s: %s", policy.campaign.slug, exc.message)
            return None
    logger.info("retraining campaign %s: %s run %s (%s)", policy.campaign.slug, run.kind, run.pk, check.reason)
    return run
