"""Campaigns, their guidelines and prompts, and the choice vocabulary votes use."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


class Choice(models.TextChoices):
    A = "a", "A better"
    B = "b", "B better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Strength(models.TextChoices):
    SLIGHTLY = "slightly", "Slightly"
    MUCH = "much", "Much"


def validate_sampling_params(value) -> None:
    """A campaign's sampling parameters must be valid ``SamplingParams`` fields (unknown keys rejected)."""
    from training.params import SamplingParams  # torch-free

    try:
        SamplingParams.from_dict(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"Invalid sampling parameters: {exc}") from None

class Campaign(models.Model):
    """A collection effort: what is compared, by whom, how often, under which guideline."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    policy = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="campaigns",
        help_text="The active policy pairs are sampled from; the default policy is registered and set on first use.",
    )
    arena_policy = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="arena_campaigns",
        help_text="Arena mode: each pair is one response from the policy and one from this version.",
    )
    sampling_params = models.JSONField(
        default=dict, blank=True, validators=[validate_sampling_params],
        help_text='Overrides of the sampling defaults, e.g. {"temperature": 0.8, "max_new_tokens": 200}.',
    )
    votes_per_pair = models.PositiveSmallIntegerField(default=3)
    gold_rate = models.FloatField(default=0.0, help_text="Fraction of hand-outs that are gold comparisons.")
    lease_minutes = models.PositiveSmallIntegerField(default=15)
    buffer_size = models.PositiveIntegerField(
        default=20, help_text="Open comparisons the workers keep sampled ahead of annotators (0: no sampling)."
    )
    # Set when a buffer refill is enqueued, cleared when it ends: one refill in flight per campaign.
    refill_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    judge_settings = models.JSONField(default=dict, blank=True)
    # The promotion gate, applied to each evaluation of a new version (annotation.services.evaluations).
    gate_min_win_rate = models.FloatField(
        null=True, blank=True,
        help_text="Promote an evaluated version automatically when its win rate over the active policy is at least this "
        "(ties count half). Empty: no automatic promotion, an admin decides.",
    )
    gate_max_kl = models.FloatField(
        null=True, blank=True, help_text="...and its KL to the original model is at most this (nats). Empty: no limit.",
    )
    gate_min_prompts = models.PositiveIntegerField(
        default=16, help_text="...and at least this many eval prompts were answered: a win rate over a handful of prompts "
        "proves little (6 prompts at 4 wins: 95% interval 0.30-0.90), so fewer leaves it to an admin.",
    )
    # The judge gate: which AI judge's votes may become training preferences, and while when.
    training_judge = models.ForeignKey(
        "Judge", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The AI judge whose verdicts become preferences (source ai) on comparisons people have not decided. "
        "Empty: judges never train anything.",
    )
    judge_gate_min_agreement = models.FloatField(
        default=0.7, help_text="Its preferences enter training data only while its agreement with people's majority "
        "(on comparisons both labelled) is at least this...",
    )
    judge_gate_min_comparisons = models.PositiveIntegerField(
        default=20, help_text="...measured on at least this many comparisons.",
    )
    # The retrain policy is its own row (RetrainPolicy, campaign.retrain_policy); promotions: campaign.promotions.
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(votes_per_pair__gte=1), name="campaign_votes_per_pair_gte_1"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="campaign_gold_rate_0_1"),
            models.CheckConstraint(condition=Q(lease_minutes__gte=1), name="campaign_lease_minutes_gte_1"),
            models.CheckConstraint(condition=Q(gate_min_win_rate__isnull=True) | (Q(gate_min_win_rate__gte=0) & Q(gate_min_win_rate__lte=1)),
                                   name="campaign_gate_min_win_rate_0_1"),
            models.CheckConstraint(condition=Q(gate_max_kl__isnull=True) | Q(gate_max_kl__gte=0), name="campaign_gate_max_kl_gte_0"),
            models.CheckConstraint(condition=Q(judge_gate_min_agreement__gte=0) & Q(judge_gate_min_agreement__lte=1),
                                   name="campaign_judge_gate_0_1"),
        ]

    def clean(self):
        if self.training_judge_id is not None and self.training_judge.campaign_id != self.pk:
            raise ValidationError({"training_judge": "The training judge must be one of this campaign's judges."})

    def __str__(self):
        return self.slug


class CampaignMembership(models.Model):
    """An annotator's admission to a campaign: annotators see, lease, vote and skip only in their
    campaigns; reviewers and admins see every campaign (``selectors.campaigns_for_user``).
    Written by ``services.campaign_members_add`` / ``campaign_members_remove`` only."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="campaign_memberships")
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "user"], name="membership_unique_per_campaign")]
        ordering = ["campaign", "user"]

    def __str__(self):
        return f"{self.user} in {self.campaign}"


class GuidelineVersion(models.Model):
    """Immutable guideline text; editing a guideline creates the next version."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="guidelines")
    version = models.PositiveIntegerField()
    text = models.TextField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "version"], name="guideline_unique_version")]
        ordering = ["campaign", "-version"]

    def __str__(self):
        return f"{self.campaign.slug} v{self.version}"


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train"
        EVAL = "eval"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(help_text="Chat turns: a list of {role, content}.")
    # sha256 of the canonical JSON of `messages`: importing the same prompt twice is a no-op.
    messages_hash = models.CharField(max_length=64)
    tags = models.JSONField(default=list, blank=True)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "messages_hash"], name="prompt_unique_per_campaign")]

    def __str__(self):
        return f"prompt {self.pk}"
