"""AI judges configured per campaign: each produces ordinary Votes with its name in
``Vote.judge`` instead of an annotator, so every statistic treats judges like annotators."""

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from annotation.models.campaigns import Campaign


API_KEY_ENV = re.compile(r"[A-Z][A-Z0-9_]*_API_KEY")


class Judge(models.Model):
    """One AI judge of a campaign (``training.judges``):

    - ``local``: a causal LM (``model``: a model spec or a policy version name; empty: the
      campaign's default policy model) reading the verdict letter's probabilities, both orders;
    - ``openai``: an OpenAI-compatible endpoint (``base_url``, ``model``, the key in the
      environment variable ``api_key_env``), both orders;
    - ``reward``: a reward-model version (``model``: its name; empty: the campaign's latest).

    Its votes are recorded as ``judge:<name>``; they never take an annotator's place (they do
    not count towards a comparison's votes) and enter training data only through the judge gate."""

    class Kind(models.TextChoices):
        LOCAL = "local", "local model, verdict-token probabilities"
        OPENAI = "openai", "OpenAI-compatible endpoint"
        REWARD = "reward", "reward model, σ(r_A − r_B)"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="judges")
    name = models.SlugField(max_length=64, help_text="Its votes are recorded as judge:<name>.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    model = models.CharField(max_length=500, blank=True, help_text="Model spec or version name (see the kind).")
    base_url = models.URLField(blank=True, help_text="openai: e.g. https://api.openai.com/v1")
    api_key_env = models.CharField(max_length=100, blank=True, default="OPENAI_API_KEY",
                                   help_text="openai: the environment variable holding the API key (never the key itself).")
    both_orders = models.BooleanField(default=True, help_text="Judge A-first and B-first and combine (position bias cancels).")
    batch_size = models.PositiveSmallIntegerField(default=8)
    concurrency = models.PositiveSmallIntegerField(default=4, help_text="openai: requests in flight at most.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "name"], name="judge_unique_name"),
            models.CheckConstraint(condition=Q(batch_size__gte=1) & Q(concurrency__gte=1), name="judge_batch_concurrency_gte_1"),
        ]

    def clean(self):
        if self.kind == self.Kind.OPENAI and not (self.base_url and self.model):
            raise ValidationError({"base_url": "An openai judge needs a base URL and a model name."})
        if self.api_key_env and not API_KEY_ENV.fullmatch(self.api_key_env):
            # Any other variable (SECRET_KEY, DATABASE_URL) would be sent to base_url as the key.
            raise ValidationError({"api_key_env": "The key's environment variable must be named like OPENAI_API_KEY "
                                                  "(capitals, digits and _, ending in _API_KEY)."})

    @property
    def voter(self) -> str:
        return f"judge:{self.name}"

    def __str__(self):
        return f"{self.campaign} {self.voter} ({self.kind})"
