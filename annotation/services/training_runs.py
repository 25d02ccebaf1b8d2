"""Training runs: queued here, started, logged and finished by the gpu worker's task."""

from __future__ import annotations

import math

from django.db import transaction
from django.utils import timezone

from annotation import enqueue
from annotation.errors import InvalidInput
from annotation.limits import MAX_RUN_ERROR_CHARS
from annotation.models import Campaign, ModelVersion, TrainingRun
from annotation.services.sampling import campaign_policy_ensure
from training.config import config_from
from training.recipes import recipe_for


def training_run_create(*, campaign: Campaign, kind: str, config: dict | None = None, base_version: ModelVersion | None = None) -> TrainingRun:
    """Queue a training run on the campaign's preferences, from ``base_version`` (default: the
    campaign's active policy). Kind and config are checked here against the trainer's config
    dataclass (torch-free), so a typo is refused before anything is queued."""
    try:
        recipe = recipe_for(kind)
    except ValueError as exc:
        raise InvalidInput(f"{exc}.", details={"field": "kind"}) from None
    if config is not None and not isinstance(config, dict):
        raise InvalidInput("A training config must be a JSON object.", details={"field": "config"})
    config = config or {}
    if "model" in config:
        raise InvalidInput("A training config cannot set 'model': the run trains its base version.", details={"field": "config"})
    try:
        config_from(recipe.config_cls, None, config)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Invalid {kind} config: {exc}", details={"field": "config"}) from None
    with transaction.atomic():
        base = base_version or campaign_policy_ensure(campaign=campaign)
        run = TrainingRun.objects.create(kind=kind, campaign=campaign, config=config, base_version=base)
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
        run.save(update_fields=["status", "device", "data_manifest", "started_at"])
    return run


def training_run_log(*, run_id: int, metrics: dict) -> None:
    """Append one metrics row (a step's losses and rewards) to the run, under a row lock."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().only("metrics").get(pk=run_id)
        run.metrics = [*run.metrics, _finite(metrics)]
        run.save(update_fields=["metrics"])


def training_run_cancel(*, run_id: int) -> TrainingRun:
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
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
