"""Training runs: queued here (console, API, shell or the retrain beat), started, logged,
advanced and finished by the gpu worker's task."""

from __future__ import annotations

import math

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import enqueue, selectors
from annotation.errors import Conflict, InvalidInput, NotFound
from annotation.limits import MAX_METRIC_NAME_CHARS, MAX_RUN_ERROR_CHARS
from annotation.models import Campaign, ModelVersion, TrainingMetric, TrainingRun, validate_run_config
from annotation.services.sampling import campaign_policy_ensure


def training_run_create(
    *,
    campaign: Campaign,
    kind: str,
    config: dict | None = None,
    base_version: ModelVersion | None = None,
    created_by: AbstractBaseUser | None = None,
    trigger: str = TrainingRun.Trigger.SHELL,
    data_scope: str = TrainingRun.DataScope.ALL,
    dispatch: bool = True,
) -> TrainingRun:
    """Queue a training run on the campaign's preferences, from ``base_version`` (default: the
    campaign's active policy). Kind and config are checked here against the trainer's config
    dataclass (torch-free), so a typo is refused before anything is queued. ``data_scope``: all
    the campaign's training preferences, or ``on_policy`` (those on pairs the base version
    sampled). A campaign has at
    most one queued or running run per kind (a database constraint): a second is a Conflict
    naming the first. ``dispatch=False``: nothing is queued, the caller trains it in its own
    process (``simulate_loop``), so no gpu worker picks it up as well."""
    if trigger not in TrainingRun.Trigger.values:
        raise InvalidInput(f"Unknown trigger {trigger!r}; known: {', '.join(TrainingRun.Trigger.values)}.", details={"field": "trigger"})
    if data_scope not in TrainingRun.DataScope.values:
        raise InvalidInput(f"Unknown data scope {data_scope!r}; known: {', '.join(TrainingRun.DataScope.values)}.",
                           details={"field": "data_scope"})
    config = {} if config is None else config
    try:
        validate_run_config(kind, config)
    except ValidationError as exc:
        field, (message, *_) = next(iter(exc.message_dict.items()))
        raise InvalidInput(message, details={"field": field}) from None
    from training.recipes import recipe_for

    if recipe_for(kind).online:  # refused now, not failed later: it needs a reward model
        selectors.online_reward_models(campaign=campaign, config=config)
    user = created_by if created_by is not None and created_by.is_authenticated else None
    with transaction.atomic():
        base = base_version or campaign_policy_ensure(campaign=campaign)
        if base.kind != ModelVersion.Kind.POLICY:
            raise InvalidInput(f"'{base.name}' is a {base.kind} model; a run starts from a policy version.",
                               details={"field": "base_version"})
        try:
            with transaction.atomic():  # a savepoint: a caller's transaction survives the refusal
                run = TrainingRun.objects.create(
                    kind=kind, campaign=campaign, config=config, base_version=base, created_by=user, trigger=trigger,
                    data_scope=data_scope,
                )
        except IntegrityError:
            active = selectors.training_run_active_id(campaign=campaign, kind=kind)
            if active is None:
                raise
            raise Conflict(
                f"Campaign '{campaign.slug}' already has a {kind} run queued or running (run {active}); "
                "cancel it or wait for it to end.",
                details={"run_id": active},
            ) from None
        if dispatch:
            transaction.on_commit(lambda: enqueue.gpu_train(run.pk))
    return run


def _finite(value):
    """JSON that PostgreSQL's jsonb accepts: NaN / ±inf (a diverged loss) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def training_run_start(*, run_id: int, device: str, data_manifest: dict) -> TrainingRun | None:
    """Mark a queued run as running (a running one stays running: its task was redelivered
    after a worker died, and resumes); None when it was cancelled or has finished."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
            return None
        run.status, run.device, run.data_manifest = TrainingRun.Status.RUNNING, device, data_manifest
        run.started_at = run.started_at or timezone.now()
        run.heartbeat_at = timezone.now()
        run.save(update_fields=["status", "device", "data_manifest", "started_at", "heartbeat_at"])
    return run


def training_run_progress(*, run_id: int, step: int, total_steps: int) -> None:
    """Record how far a run is: ``step`` of ``total_steps`` optimiser steps (pages, API and
    ``manage.py train --wait`` show it; ETA from the ``seconds_per_step`` metric), and that its
    worker is alive (``heartbeat_at``, read by the stale sweep)."""
    TrainingRun.objects.filter(pk=run_id).update(step=max(0, int(step)), total_steps=max(0, int(total_steps)),
                                                 heartbeat_at=timezone.now())


def _metric_value(name: str, value) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (bool, int, float)):
        raise InvalidInput(f"Metric {name!r} is not a number: {value!r}.", details={"field": name})
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def training_run_log(*, run_id: int, metrics: dict, step: int | None = None) -> int:
    """Append one step's metrics to the run as TrainingMetric rows, in one INSERT: ``step``
    (default: the dict's ``"step"``) and one row per other key; NaN / ±inf become null. A step
    logged again (a resumed run redoes the steps after its last checkpoint) replaces its
    values. Returns the number of rows written."""
    if step is None:
        if not isinstance(metrics.get("step"), (int, float)):
            raise InvalidInput("A metrics row needs its step.", details={"field": "step"})
        step = metrics["step"]
    rows = [
        TrainingMetric(run_id=run_id, step=int(step), name=str(name)[:MAX_METRIC_NAME_CHARS], value=_metric_value(name, value))
        for name, value in metrics.items()
        if name != "step"
    ]
    TrainingMetric.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["run", "name", "step"], update_fields=["value", "created_at"]
    )
    return len(rows)


def training_run_cancel(*, run_id: int) -> TrainingRun:
    """Cancel a queued or running run (a running one stops before its next step). Cancelling a
    cancelled run changes nothing; one that succeeded or failed is a Conflict."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            raise NotFound(f"No training run {run_id}.")
        if run.status in (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED):
            raise Conflict(f"Run {run_id} already {run.status}; there is nothing to cancel.", details={"status": run.status})
        if run.status in TrainingRun.ACTIVE:
            run.status = TrainingRun.Status.CANCELLED
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "finished_at"])
    return run


def training_run_finish(
    *, run_id: int, status: str, error: str = "", artifact_path: str = "", final_metrics: dict | None = None
) -> ModelVersion | None:
    """Close a run; a successful one registers its output as a new ModelVersion (parent: the
    run's base version), in the same transaction."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().select_related("base_version").get(pk=run_id)
        if run.status in (TrainingRun.Status.FAILED, TrainingRun.Status.SUCCEEDED):
            return None  # failed by the stale sweep (or a second delivery): the first outcome stands, nothing registered
        if run.status == TrainingRun.Status.CANCELLED:
            status = TrainingRun.Status.CANCELLED  # cancelled while it ran or failed: what the admin asked for stands
        run.status, run.error, run.finished_at = status, error[:MAX_RUN_ERROR_CHARS], timezone.now()
        run.save(update_fields=["status", "error", "finished_at"])
        if status != TrainingRun.Status.SUCCEEDED:
            return None
        base = run.base_version
        suffix = f"+{run.kind}-{run.pk}"
        return ModelVersion.objects.create(
            name=base.name[: 200 - len(suffix)] + suffix,
            kind=ModelVersion.Kind.REWARD if run.kind == TrainingRun.Kind.REWARD else ModelVersion.Kind.POLICY,
            base=base.base,
            parent=base,
            artifact_path=artifact_path,
            training_run=run,
            metrics=_finite(final_metrics or {}),
        )
