"""Run a queued TrainingRun: the glue between ``annotation`` (which preferences, which base
version, where metrics and the new ModelVersion go) and ``training.recipes`` (the trainers).

Metrics are stored as TrainingMetric rows as the recipe reports them, and the run's step /
total steps as it goes (at most once a second, and always the first and where it stopped); a cancel
(the run's status set to ``cancelled``) is seen between steps; a success registers the output
as a new version.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from django.conf import settings

from annotation import selectors, services
from annotation.quality import judge_gate
from annotation.models import Campaign, Evaluation, ModelVersion, TrainingRun

logger = logging.getLogger(__name__)

MAX_PROBLEMS_KEPT = 50  # unusable rows listed in a run's data manifest (all are counted)
PROGRESS_EVERY_SECONDS = 1.0  # step / total written at most this often (one UPDATE each)


def artifacts_dir() -> Path:
    return Path(settings.PREFLOOP["ARTIFACTS_DIR"])


def _finish(run_id: int, status: str, **fields) -> str:
    """Close the run; returns the status it ends with (a cancel or the stale sweep may have
    decided it first)."""
    services.training_run_finish(run_id=run_id, status=status, **fields)
    return TrainingRun.objects.values_list("status", flat=True).get(pk=run_id)


def run_training(*, run_id: int, evaluate: bool = True, on_progress=None) -> str:
    """Train run ``run_id``; returns its final status. A policy that succeeds is queued for
    evaluation unless ``evaluate=False`` (``simulate_loop`` evaluates under its own rule);
    ``on_progress(step, total)`` is called at every step (a caller's progress bar)."""
    run = TrainingRun.objects.select_related("base_version", "campaign").get(pk=run_id)
    if run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
        return run.status  # cancelled before it started, or already finished
    # Running from the moment a worker holds it, before the imports and the data export: a pool
    # child SIGKILLed there (out of memory) is acknowledged by its main process as lost, never
    # redelivered, and only a running run is swept: a queued one would block the kind for good.
    # (A redelivered run is running already: its recorded device and data manifest stay.)
    if run.status == TrainingRun.Status.QUEUED and services.training_run_start(run_id=run_id, device="", data_manifest={}) is None:
        return TrainingRun.objects.get(pk=run_id).status
    from training.config import config_from
    from training.data import manifest
    from training.recipes import recipe_for

    try:
        recipe = recipe_for(run.kind)
    except ValueError as exc:
        return _finish(run_id, TrainingRun.Status.FAILED, error=str(exc))
    if recipe.online:
        return _run_online(run, recipe, on_progress=on_progress, evaluate=evaluate)
    try:
        cfg = config_from(recipe.config_cls, None, {**run.config, "model": run.base_version.spec})
        on_policy = run.data_scope == TrainingRun.DataScope.ON_POLICY
        gate = judge_gate(campaign=run.campaign) if run.campaign else None  # read once: the data and the manifest
        records, problems = (selectors.training_records(campaign=run.campaign, sampled_by=run.base_version if on_policy else None,
                                                        include_ai=gate["open"])
                             if run.campaign else ([], []))
        for problem in problems[:MAX_PROBLEMS_KEPT]:
            logger.warning("training run %s: unusable row, %s", run_id, problem)
        if not records:
            where = f"on pairs sampled by {run.base_version.name} (data scope on_policy)" if on_policy else "in this campaign"
            raise ValueError(f"no training preferences {where} yet"
                             + (f" ({len(problems)} unusable; the first: {problems[0]})" if problems else ""))
        rows = recipe.rows_from_preferences(records)
    except Exception as exc:  # a config or data problem: the run records why
        return _finish(run_id, TrainingRun.Status.FAILED, error=str(exc))
    data_manifest = {**manifest(records), "scope": run.data_scope, "judge_gate": gate["reason"] if gate else None, "unusable": len(problems), "problems": problems[:MAX_PROBLEMS_KEPT]}
    return _train(run, recipe, cfg, rows, data_manifest, on_progress=on_progress, evaluate=evaluate)


def _run_online(run: TrainingRun, recipe, *, on_progress=None, evaluate: bool = True) -> str:
    """PPO / RLOO / GRPO: the campaign's training prompts, its eval prompts for the monitor,
    the reward model (and gold model) resolved from version names to their weights."""
    from training.config import config_from

    try:
        reward, gold = selectors.online_reward_models(campaign=run.campaign, config=run.config)
        overrides = {**run.config, "model": run.base_version.spec, "reward_model": reward.spec,
                     "gold_model": gold.spec if gold else ""}
        cfg = config_from(recipe.config_cls, None, overrides)
        prompts = selectors.campaign_prompt_messages(campaign=run.campaign, split="train")
        eval_prompts = selectors.campaign_prompt_messages(campaign=run.campaign, split="eval")
        if not prompts:
            raise ValueError(f"campaign '{run.campaign.slug}' has no training prompts")
    except Exception as exc:
        return _finish(run.pk, TrainingRun.Status.FAILED, error=str(getattr(exc, "message", exc)))
    data_manifest = {"prompts": len(prompts), "eval_prompts": len(eval_prompts), "reward_model": reward.name,
                     "gold_model": gold.name if gold else None}
    return _train(run, recipe, cfg, prompts, data_manifest, on_progress=on_progress, evaluate=evaluate,
                  eval_records=eval_prompts)


def _train(run: TrainingRun, recipe, cfg, rows: list, data_manifest: dict, *, on_progress=None, evaluate: bool = True,
           **train_kw) -> str:
    """Start the run, train it (progress, metrics, cancel), register its output."""
    from training.models import resolve_device

    run_id = run.pk
    # A redelivered task (the worker died mid-run: acks_late) finds the run RUNNING and resumes
    # it from its last checkpoint in the same directory.
    if services.training_run_start(run_id=run_id, device=str(resolve_device(cfg.device)), data_manifest=data_manifest) is None:
        return TrainingRun.objects.get(pk=run_id).status
    out = artifacts_dir() / f"run-{run_id}"

    def cancelled() -> bool:  # cancelled by an admin, or failed by the stale sweep: stop
        return not TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).exists()

    seen: dict = {"now": None, "written": None, "at": float("-inf")}  # (step, total): last seen, last written

    def write_progress() -> None:
        if seen["now"] is not None and seen["now"] != seen["written"]:
            step, total = seen["now"]
            services.training_run_progress(run_id=run_id, step=step, total_steps=total)
            seen["written"], seen["at"] = seen["now"], time.monotonic()

    def progress(step: int, total: int) -> None:
        if on_progress is not None:
            on_progress(step, total)
        seen["now"] = (step, total)
        if step == total or time.monotonic() - seen["at"] >= PROGRESS_EVERY_SECONDS:
            write_progress()

    try:
        result, report = recipe.train(cfg, rows, out, should_cancel=cancelled, on_progress=progress,
                                      on_metrics=lambda step, m: services.training_run_log(run_id=run_id, metrics=m, step=step),
                                      **train_kw)
    except Exception as exc:  # the run records why; the task does not retry a failed training
        logger.exception("training run %s failed", run_id)
        write_progress()
        return _finish(run_id, TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
    write_progress()  # where a cancelled run stopped
    if result.status != "completed":
        return _finish(run_id, TrainingRun.Status.CANCELLED)
    # The last step's training row and its final evaluation row, together.
    final = {k: v for m in result.metrics if m.get("step") == result.step for k, v in m.items()}
    try:
        version = services.training_run_finish(run_id=run_id, status=TrainingRun.Status.SUCCEEDED, artifact_path=str(out),
                                               final_metrics={**final, **result.info, "data_report": report.as_dict()})
    except Exception as exc:  # never leave a finished run RUNNING
        logger.exception("training run %s: could not register its output", run_id)
        return _finish(run_id, TrainingRun.Status.FAILED,
                       error=f"trained into {out} but could not register it: {type(exc).__name__}: {exc}")
    if version is None:  # cancelled after its last step: the cancel stands, nothing registered
        return TrainingRun.objects.get(pk=run_id).status
    logger.info("training run %s succeeded: %s", run_id, version)
    if evaluate and version.kind == ModelVersion.Kind.POLICY and run.campaign_id is not None:
        # Re-read: the campaign's active policy (the baseline) may have changed during training.
        _evaluate(Campaign.objects.get(pk=run.campaign_id), version)
    return TrainingRun.Status.SUCCEEDED


def _evaluate(campaign, version) -> None:
    """Queue the new policy's evaluation (gpu queue, after the commit); a refusal is logged,
    never a failure of the run that succeeded."""
    try:
        evaluation = services.evaluation_create(campaign=campaign, candidate=version, trigger=Evaluation.Trigger.RUN)
    except Exception:
        logger.exception("could not queue the evaluation of %s", version)
        return
    logger.info("evaluation %s of %s queued", evaluation.pk, version)
