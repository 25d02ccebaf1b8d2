"""Evaluations of a policy version against the campaign's active policy, and the gate's decision."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.campaigns import Campaign
from annotation.models.policies import PolicyPromotion
from annotation.models.runs import ModelVersion


class Evaluation(models.Model):
    """The candidate and the baseline (the active policy when the evaluation was created)
    answer the campaign's eval prompts with the same seed; the reward model judges the pairs
    (``training.evaluation``). ``win_rate`` counts ties half, with a 95% Wilson interval
    [``win_low``, ``win_high``]; ``kl`` is KL(candidate ‖ reference), the reference being the
    candidate's root ancestor (the original model). Then the campaign's gate decides:
    ``promoted``, ``held`` (an admin decides) or ``no_gate`` (the campaign has none)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Trigger(models.TextChoices):
        RUN = "run", "After a training run"
        CONSOLE = "console"
        API = "api"
        SHELL = "shell"

    class Decision(models.TextChoices):
        PROMOTED = "promoted"
        HELD = "held"
        NO_GATE = "no_gate"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="evaluations")
    candidate = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="evaluations")
    baseline = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+",
                                 help_text="The campaign's active policy when the evaluation was created.")
    reference = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                  help_text="The KL reference: the candidate's root ancestor (set when it runs).")
    reward_model = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                     help_text="The judge: the campaign's latest reward model when it ran.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SHELL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    seed = models.PositiveIntegerField(help_text="Base seed of both policies' samples.")
    max_prompts = models.PositiveIntegerField(help_text="At most this many eval prompts (the oldest first).")
    sampling_params = models.JSONField(default=dict, blank=True, help_text="The campaign's sampling parameters it ran with.")
    n_prompts = models.PositiveIntegerField(default=0, help_text="Eval prompts answered by both policies.")
    wins = models.PositiveIntegerField(default=0)
    ties = models.PositiveIntegerField(default=0)
    losses = models.PositiveIntegerField(default=0)
    win_rate = models.FloatField(null=True, blank=True, help_text="Candidate over baseline, ties counted half.")
    win_low = models.FloatField(null=True, blank=True, help_text="95% Wilson interval, lower end.")
    win_high = models.FloatField(null=True, blank=True, help_text="95% Wilson interval, upper end.")
    kl = models.FloatField(null=True, blank=True, help_text="KL(candidate ‖ reference), nats per response.")
    mean_length_new = models.FloatField(null=True, blank=True, help_text="Candidate's mean response length in tokens.")
    mean_length_active = models.FloatField(null=True, blank=True)
    distinct2_new = models.FloatField(null=True, blank=True, help_text="Unique / all word bigrams of the candidate's responses.")
    distinct2_active = models.FloatField(null=True, blank=True)
    examples = models.JSONField(default=list, blank=True, help_text="A few pairs: prompt, both texts, rewards, outcome.")
    error = models.TextField(blank=True)
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True)
    decision_reason = models.TextField(blank=True)
    promotion = models.ForeignKey(PolicyPromotion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                  help_text="The promotion the gate made.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One queued or running evaluation of a version per campaign (a second is a 409).
            models.UniqueConstraint(
                fields=["campaign", "candidate"], condition=Q(status__in=["queued", "running"]), name="evaluation_one_active_per_candidate"
            ),
            models.CheckConstraint(
                condition=Q(win_rate__isnull=True) | (Q(win_rate__gte=0) & Q(win_rate__lte=1)), name="evaluation_win_rate_0_1"
            ),
        ]

    def __str__(self):
        return f"evaluation {self.pk} of {self.candidate_id} vs {self.baseline_id}"
