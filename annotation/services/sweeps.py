"""Work whose worker was lost: a training run or an evaluation left ``running`` by a worker that
was killed (SIGKILL, out of memory, a machine gone) would block its campaign (a second run of
the kind is refused while one is active) and show progress that never comes. The beat task
``sweep_stale`` fails it, saying why, once its worker has given no sign of life for
``PREFLOOP["WORK_STALE_MINUTES"]``: for a run its last progress write (every second or so
while it trains), for an evaluation (which writes nothing until it ends) its start. A
redelivered task then finds it failed and does nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.models import Evaluation, TrainingRun


@dataclass
class Swept:
    runs: list[int] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)


def _lost(minutes: int) -> str:
    return (f"no sign of life from its worker for {minutes} minutes: the worker was lost (killed, out of memory or "
            "restarted); start it again")


def stale_work_fail(*, now: datetime | None = None) -> Swept:
    """Fail the running runs and evaluations whose worker has been silent too long; returns their ids."""
    now = now or timezone.now()
    minutes = int(settings.PREFLOOP["WORK_STALE_MINUTES"])
    cutoff = now - timedelta(minutes=minutes)
    swept = Swept()
    stale_runs = (TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING)
                  .annotate(seen=Coalesce("heartbeat_at", "started_at", "created_at")).filter(seen__lt=cutoff))
    for pk in stale_runs.values_list("pk", flat=True):
        with transaction.atomic():  # re-read under the lock: it may have moved on meanwhile
            run = (TrainingRun.objects.select_for_update().filter(pk=pk, status=TrainingRun.Status.RUNNING)
                   .annotate(seen=Coalesce("heartbeat_at", "started_at", "created_at")).filter(seen__lt=cutoff).first())
            if run is None:
                continue
            run.status, run.error, run.finished_at = TrainingRun.Status.FAILED, _lost(minutes), now
            run.save(update_fields=["status", "error", "finished_at"])
            swept.runs.append(pk)
    stale_evaluations = Evaluation.objects.filter(Q(started_at__lt=cutoff) | Q(started_at__isnull=True, created_at__lt=cutoff),
                                                  status=Evaluation.Status.RUNNING)
    for pk in stale_evaluations.values_list("pk", flat=True):
        with transaction.atomic():
            n = Evaluation.objects.filter(pk=pk, status=Evaluation.Status.RUNNING).update(
                status=Evaluation.Status.FAILED, error=_lost(minutes), finished_at=now)
            if n:
                swept.evaluations.append(pk)
    return swept
