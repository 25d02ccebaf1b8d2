"""What annotators work on and what they produce: responses, comparisons, leases, votes and
the preferences derived from them."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from annotation.limits import MAX_SKIP_REASON_CHARS
from annotation.models.campaigns import Campaign, Choice, GuidelineVersion, Prompt, Strength


class Response(models.Model):
    class Source(models.TextChoices):
        POLICY = "policy"
        IMPORT = "import"
        HUMAN = "human"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    model_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="responses")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.POLICY)
    text = models.TextField()
    text_hash = models.CharField(max_length=64)
    sampling_params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    token_count = models.PositiveIntegerField(null=True, blank=True)
    logprob_sum = models.FloatField(null=True, blank=True, help_text="Sum of token log-probs under the sampling policy.")
    finish_reason = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Imported / human-written texts are stored once per prompt.
            models.UniqueConstraint(
                fields=["prompt", "text_hash"],
                condition=Q(model_version__isnull=True),
                name="response_unique_text_without_model",
            ),
        ]

    def __str__(self):
        return f"response {self.pk}"


class Comparison(models.Model):
    class Kind(models.TextChoices):
        NORMAL = "normal"
        GOLD = "gold"

    class Status(models.TextChoices):
        OPEN = "open"
        COMPLETE = "complete"

    # no index of its own: comparison_handout_idx and comparison_unique_pair begin with it
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="comparisons", db_index=False)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    response_a = models.ForeignKey(Response, on_delete=models.PROTECT, related_name="+")
    response_b = models.ForeignKey(Response, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.NORMAL)
    gold_answer = models.CharField(max_length=8, choices=Choice.choices, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    # Copied from the campaign when created, so that the check constraint below can hold it.
    votes_required = models.PositiveSmallIntegerField()
    vote_count = models.PositiveSmallIntegerField(default=0)
    # Its leases in state active, kept by every change of a lease's state (``services.assignment``):
    # with ``vote_count``, whether a slot is free, read on the row. A lease past its expiry counts
    # until the sweep ends it (every minute, and at once when a hand-out finds nothing else).
    leased = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(response_a=F("response_b")), name="comparison_distinct_responses"),
            # The overlap guarantee, enforced by the database itself (gold items are answered by everyone).
            models.CheckConstraint(
                condition=Q(kind="gold") | Q(vote_count__lte=F("votes_required")),
                name="comparison_votes_within_required",
            ),
            # ... counting the slots leased: never more votes and leases than required.
            models.CheckConstraint(
                condition=Q(kind="gold") | Q(vote_count__lte=F("votes_required") - F("leased")),
                name="comparison_slots_within_required",
            ),
            models.CheckConstraint(
                condition=Q(kind="normal", gold_answer="") | (Q(kind="gold") & ~Q(gold_answer="")),
                name="comparison_gold_has_answer",
            ),
            models.UniqueConstraint(fields=["campaign", "response_a", "response_b"], name="comparison_unique_pair"),
        ]
        # A lease walks it in hand-out order (fewest votes, then lowest id) and stops at its first row.
        indexes = [models.Index(fields=["campaign", "status", "kind", "vote_count", "id"], name="comparison_handout_idx")]

    def __str__(self):
        return f"comparison {self.pk}"


class Assignment(models.Model):
    """A lease of one comparison to one annotator, with the left/right order shown."""

    class Order(models.TextChoices):
        AB = "ab", "A left"
        BA = "ba", "B left"

    class State(models.TextChoices):
        ACTIVE = "active"
        DONE = "done"
        SKIPPED = "skipped"
        EXPIRED = "expired"

    # no index of its own: assignment_unique_per_annotator begins with it (each index costs every
    # lease, vote and skip: a lease's state is indexed, so its updates touch every index)
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    # The comparison's campaign, copied when the lease is made (its one writer: the hand-out's
    # INSERT ... SELECT): an annotator's lease held in a campaign, and a campaign's leases past
    # their expiry, are read by an index of their own (assignment_active_idx).
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+", editable=False)
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    order = models.CharField(max_length=2, choices=Order.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.ACTIVE)
    guideline_version = models.ForeignKey(GuidelineVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    skip_reason = models.CharField(max_length=MAX_SKIP_REASON_CHARS, blank=True)

    class Meta:
        constraints = [
            # A comparison never goes to the same annotator twice.
            models.UniqueConstraint(fields=["comparison", "annotator"], name="assignment_unique_per_annotator"),
            models.CheckConstraint(condition=Q(expires_at__gt=F("leased_at")), name="assignment_expiry_after_lease"),
        ]
        indexes = [
            # Active leases alone (few, whatever the history): the one an annotator holds in a
            # campaign (every hand-out asks), a campaign's past their expiry (the sweep).
            models.Index(fields=["campaign", "annotator", "expires_at"], condition=Q(state="active"), name="assignment_active_idx"),
        ]


class Vote(models.Model):
    """One judgement of a comparison, by an annotator or an AI judge. `choice` is in A/B terms."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="votes")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="votes")
    judge = models.CharField(max_length=200, blank=True, help_text="AI judge name, when no annotator.")
    assignment = models.OneToOneField(Assignment, null=True, blank=True, on_delete=models.PROTECT, related_name="vote")
    choice = models.CharField(max_length=8, choices=Choice.choices)
    strength = models.CharField(max_length=8, choices=Strength.choices, blank=True)
    rationale = models.TextField(blank=True)
    guideline_version = models.ForeignKey(GuidelineVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="votes")
    order_shown = models.CharField(max_length=2, choices=Assignment.Order.choices, blank=True)
    seconds_spent = models.FloatField(null=True, blank=True)
    is_gold_correct = models.BooleanField(null=True, blank=True)
    judge_details = models.JSONField(
        default=dict, blank=True,
        help_text="An AI judge's verdict: P(a), P(b), P(tie), whether both orders agreed, each order's choice, "
        "latency and token usage.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], condition=Q(annotator__isnull=False), name="vote_unique_annotator"
            ),
            models.UniqueConstraint(fields=["comparison", "judge"], condition=~Q(judge=""), name="vote_unique_judge"),
            models.CheckConstraint(
                condition=(Q(annotator__isnull=False) & Q(judge="")) | (Q(annotator__isnull=True) & ~Q(judge="")),
                name="vote_annotator_xor_judge",
            ),
            models.CheckConstraint(
                condition=Q(seconds_spent__isnull=True) | Q(seconds_spent__gte=0), name="vote_seconds_non_negative"
            ),
        ]
        permissions = [
            ("annotate", "Can annotate comparisons"),
            ("review_votes", "Can see every vote of a campaign"),
        ]


class Preference(models.Model):
    """The (x, y_w, y_l) tuple derived from a completed comparison, or imported."""

    class Source(models.TextChoices):
        HUMAN = "human"
        AI = "ai"
        IMPORT = "import"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="preferences")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="preferences")
    chosen = models.ForeignKey(Response, on_delete=models.PROTECT, related_name="+")
    rejected = models.ForeignKey(Response, on_delete=models.PROTECT, related_name="+")
    comparison = models.OneToOneField(Comparison, null=True, blank=True, on_delete=models.SET_NULL, related_name="preference")
    source = models.CharField(max_length=8, choices=Source.choices)
    n_votes = models.PositiveSmallIntegerField(default=0)
    n_chosen = models.PositiveSmallIntegerField(default=0)
    n_rejected = models.PositiveSmallIntegerField(default=0)
    n_tie = models.PositiveSmallIntegerField(default=0)
    n_both_bad = models.PositiveSmallIntegerField(default=0)
    agreement = models.FloatField(null=True, blank=True, help_text="Votes for the chosen response / all votes.")
    margin = models.FloatField(null=True, blank=True, help_text="(chosen votes - rejected votes) / all votes.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Imports are de-duplicated by pair; a comparison makes at most one preference.
            models.UniqueConstraint(
                fields=["chosen", "rejected"], condition=Q(comparison__isnull=True), name="preference_unique_imported_pair"
            ),
            models.CheckConstraint(condition=~Q(chosen=F("rejected")), name="preference_distinct_responses"),
        ]
        permissions = [("export_preferences", "Can export preferences")]
