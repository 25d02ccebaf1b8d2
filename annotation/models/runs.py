"""Model versions and the training runs that make them, with their per-step metrics."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from annotation.limits import MAX_METRIC_NAME_CHARS


def validate_run_config(kind: str, config) -> None:
    """A run's (or a retrain policy's) kind and config, checked against the trainer's config
    dataclass (torch-free): unknown keys and bad values are errors naming the field. Raises
    ``ValidationError({"kind" | "config": message})``."""
    from training.config import config_from
    from training.recipes import recipe_for

    try:
        recipe = recipe_for(kind)
    except ValueError as exc:
        raise ValidationError({"kind": f"{exc}."}) from None
    if not isinstance(config, dict):
        raise ValidationError({"config": "A training config must be a JSON object."})
    if "model" in config:
        raise ValidationError({"config": "A training config cannot set 'model': the run trains its base version."})
    try:
        config_from(recipe.config_cls, None, config)
    except (TypeError, ValueError) as exc:
        raise ValidationError({"config": f"Invalid {kind} config: {exc}"}) from None


class ModelVersion(models.Model):
    """A policy or reward model: where it came from and where its weights are.

    A base model (a Hugging Face id, a local directory or the embedded default) is registered
    on first use with ``base`` = its spec and no parent; a trained version has a parent, the
    run that made it and an ``artifact_path`` holding its weights."""

    class Kind(models.TextChoices):
        POLICY = "policy"
        REWARD = "reward"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    base = models.CharField(max_length=500, help_text="Hugging Face id, local path or embedded spec.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    artifact_path = models.CharField(max_length=1000, blank=True)
    training_run = models.ForeignKey(
        "TrainingRun", null=True, blank=True, on_delete=models.PROTECT, related_name="outputs",
        help_text="The run that made this version (none for a registered base model).",
    )
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def spec(self) -> str:
        """What ``training.models.load_policy`` loads: the weights if trained, else the base."""
        return self.artifact_path or self.base

    def __str__(self):
        return self.name


class TrainingRun(models.Model):
    """One training job: what it trained on, from which version, into which, who started it,
    and how it went (status, step / total steps; metrics are TrainingMetric rows)."""

    class Kind(models.TextChoices):
        SFT = "sft"
        REWARD = "reward"
        DPO = "dpo"
        PPO = "ppo"
        RLOO = "rloo"
        GRPO = "grpo"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Trigger(models.TextChoices):
        CONSOLE = "console"
        API = "api"
        SHELL = "shell"
        PERIODIC = "periodic"

    class DataScope(models.TextChoices):
        ALL = "all", "all the campaign's training preferences"
        ON_POLICY = "on_policy", "on-policy: preferences on pairs the base version sampled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    campaign = models.ForeignKey("Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs")
    config = models.JSONField(default=dict, blank=True)
    data_scope = models.CharField(
        max_length=16, choices=DataScope.choices, default=DataScope.ALL,
        help_text="Which preferences it trains on: all of them, or only those on pairs the base version sampled "
        "(iterated / online DPO: each round learns from its own policy's samples).",
    )
    data_manifest = models.JSONField(default=dict, blank=True, help_text="Which preferences, and their hash.")
    base_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="training_runs_from")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SHELL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    device = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    step = models.PositiveIntegerField(default=0, help_text="Optimiser steps done.")
    total_steps = models.PositiveIntegerField(null=True, blank=True, help_text="Optimiser steps planned (known once it runs).")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Its worker's last sign of life (progress or metrics).")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One queued or running run per campaign and kind, whoever starts it (console, API,
            # shell, two beats at once): the services turn a violation into a 409 naming the run.
            models.UniqueConstraint(
                fields=["campaign", "kind"], condition=Q(status__in=["queued", "running"]), name="trainingrun_one_active_per_kind"
            ),
        ]
        permissions = [("manage_training", "Can start and cancel training runs and promote policies")]

    def __str__(self):
        return f"{self.kind} run {self.pk}"


class TrainingMetric(models.Model):
    """One named value of a run at one optimiser step (``loss``, ``rewards/accuracies``,
    ``eval_loss``, ``learning_rate``, ...): rows are appended as the run logs, never rewritten;
    a step logged again (a resumed run) replaces its value. NaN / ±inf are stored as null."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metric_rows")
    step = models.IntegerField()
    name = models.CharField(max_length=MAX_METRIC_NAME_CHARS)
    value = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Also the (run, name, step) index a chart's series reads.
            models.UniqueConstraint(fields=["run", "name", "step"], name="trainingmetric_unique_run_name_step"),
        ]

    def __str__(self):
        return f"run {self.run_id} step {self.step} {self.name}={self.value}"
