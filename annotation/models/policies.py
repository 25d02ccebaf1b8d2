"""How a campaign's policy moves on: when it is retrained, and which version it samples from
(every promotion and roll-back, with who and why)."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.campaigns import Campaign
from annotation.models.runs import ModelVersion, TrainingRun, validate_run_config


class RetrainPolicy(models.Model):
    """A campaign's periodic retraining: the beat task ``retrain_due`` starts a run of ``kind``
    with ``config`` (trigger ``periodic``) when enabled, at least ``every_n_preferences`` new
    preferences arrived since the last successful run of that kind started (all of them when
    none succeeded yet), and the last run of that kind was created at least
    ``min_interval_minutes`` ago."""

    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE, related_name="retrain_policy")
    enabled = models.BooleanField(default=True)
    kind = models.CharField(max_length=16, choices=TrainingRun.Kind.choices, default=TrainingRun.Kind.DPO)
    config = models.JSONField(default=dict, blank=True, help_text='Trainer config overrides, e.g. {"beta": 0.1, "epochs": 1}.')
    data_scope = models.CharField(max_length=16, choices=TrainingRun.DataScope.choices, default=TrainingRun.DataScope.ALL,
                                  help_text="The runs' training data (see TrainingRun.data_scope).")
    every_n_preferences = models.PositiveIntegerField(
        default=256, help_text="New training preferences since the last successful run of this kind that make a run due."
    )
    min_interval_minutes = models.PositiveIntegerField(
        default=60, help_text="Minutes since the last run of this kind was created before another may start."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(every_n_preferences__gte=1), name="retrainpolicy_every_n_gte_1"),
        ]
        verbose_name_plural = "retrain policies"

    def clean(self):
        validate_run_config(self.kind, self.config)

    def __str__(self):
        return f"{self.campaign} retrain {self.kind} every {self.every_n_preferences}"


class PolicyPromotion(models.Model):
    """One change of a campaign's active policy: a promotion to ``to_version`` or a roll-back
    (``to_version`` is then the version restored). ``from_version`` is the policy before
    (null: the campaign had none yet). Comparisons already sampled keep their responses' versions."""

    class Action(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="promotions")
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=8, choices=Action.choices)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Only a roll-back to "no policy yet" (the default) has no target.
            models.CheckConstraint(
                condition=Q(action="rollback") | Q(to_version__isnull=False), name="policypromotion_promote_has_target"
            ),
        ]

    def __str__(self):
        return f"{self.campaign} {self.action} {self.from_version} -> {self.to_version}"

