"""Run a queued TrainingRun: the glue between ``annotation`` (which preferences, which base
version, where metrics and the new ModelVersion go) and ``training`` (the recipes).

Metrics rows are stored on the run as the recipe reports them; a cancel (the run's status set
to ``cancelled``) is seen between steps; a success registers the output as a new version.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from django.conf import settings

from annotation import selectors, services
from annotation.models import TrainingRun

logger = logging.getLogger(__name__)


def artifacts_dir() -> Path:
    return Path(settings.PREFLOOP["ARTIFACTS_DIR"])


def run_training(*, run_id: int) -> str:
    """Train run ``run_id``; returns its final status."""
    from training import dpo, reward, sft
    from training.common import config_from
    from training.formats import FormatError, trl_preference
    from training.models import resolve_device

    run = TrainingRun.objects.select_related("base_version", "campaign").get(pk=run_id)
    if run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
        return run.status  # cancelled before it started, or already finished
    recipes = {"sft": (sft, sft.SFTConfig), "reward": (reward, reward.RewardConfig), "dpo": (dpo, dpo.DPOConfig)}
    try:
        if run.kind not in recipes:
            raise ValueError(f"no trainer for kind {run.kind!r} yet")
        recipe, config_cls = recipes[run.kind]
        cfg = config_from(config_cls, None, {**run.config, "model": run.base_version.spec})
        rows = selectors.training_rows(campaign=run.campaign) if run.campaign else []
        records = []
        for row in rows:
            try:
                records.append(trl_preference(row))
            except FormatError:
                continue  # stored preferences were validated on the way in
        if not records:
            raise ValueError("no training preferences in this campaign yet")
        from training.data import manifest

        data = [(r.prompt, r.chosen) for r in records] if run.kind == "sft" else records
    except Exception as exc:  # a config or data problem: the run records why
        services.training_run_finish(run_id=run_id, status=TrainingRun.Status.FAILED, error=str(exc))
        return TrainingRun.Status.FAILED
    # A redelivered task (the worker died mid-run: acks_late) finds the run RUNNING and resumes
    # it from its last checkpoint in the same directory.
    if services.training_run_start(run_id=run_id, device=str(resolve_device(cfg.device)), data_manifest=manifest(records)) is None:
        return TrainingRun.objects.get(pk=run_id).status
    out = artifacts_dir() / f"run-{run_id}"

    def cancelled() -> bool:
        return TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.CANCELLED).exists()

    try:
        result, report = recipe.train(cfg, data, out, on_metrics=lambda step, m: services.training_run_log(run_id=run_id, metrics=m),
                                      should_cancel=cancelled)
    except Exception as exc:  # the run records why; the task does not retry a failed training
        logger.exception("training run %s failed", run_id)
        services.training_run_finish(run_id=run_id, status=TrainingRun.Status.FAILED,
                                     error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
        return TrainingRun.Status.FAILED
    if result.status != "completed":
        services.training_run_finish(run_id=run_id, status=TrainingRun.Status.CANCELLED)
        return TrainingRun.Status.CANCELLED
    final = result.metrics[-1] if result.metrics else {}
    try:
        version = services.training_run_finish(run_id=run_id, status=TrainingRun.Status.SUCCEEDED, artifact_path=str(out),
                                               final_metrics={**final, "data_report": report.as_dict()})
    except Exception as exc:  # never leave a finished run RUNNING
        logger.exception("training run %s: could not register its output", run_id)
        services.training_run_finish(run_id=run_id, status=TrainingRun.Status.FAILED,
                                     error=f"trained into {out} but could not register it: {type(exc).__name__}: {exc}")
        return TrainingRun.Status.FAILED
    logger.info("training run %s succeeded: %s", run_id, version)
    return TrainingRun.Status.SUCCEEDED
