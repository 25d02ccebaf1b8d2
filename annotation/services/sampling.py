"""Policies and sampled pairs: which model a campaign samples from, the buffer-refill claim,
and storing sampled pairs with their provenance."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.errors import InvalidInput
from annotation.models import Campaign, Comparison, ModelVersion, Prompt, Response
from annotation.services.campaigns import comparison_create
from training.formats import text_hash


def model_version_register_base(*, spec: str, kind: str = ModelVersion.Kind.POLICY) -> ModelVersion:
    """The version for base model ``spec`` (HF id, local directory or embedded name), registered
    on first use. Safe under concurrency: the unique name makes a racing second insert a get."""
    spec = spec.strip()
    if not spec:
        raise InvalidInput("A model spec cannot be empty.")
    version, _ = ModelVersion.objects.get_or_create(name=spec, defaults={"base": spec, "kind": kind})
    return version


def campaign_policy_ensure(*, campaign: Campaign) -> ModelVersion:
    """The campaign's active policy; a campaign without one gets the default policy
    (``PREFLOOP['DEFAULT_POLICY']``, registered on first use)."""
    if campaign.policy_id is None:
        with transaction.atomic():
            locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
            if locked.policy_id is None:
                locked.policy = model_version_register_base(spec=settings.PREFLOOP["DEFAULT_POLICY"])
                locked.save(update_fields=["policy"])
        campaign.refresh_from_db(fields=["policy"])
    return campaign.policy


def campaign_refill_claim(*, campaign_id: int, now: datetime | None = None) -> datetime | None:
    """Mark a buffer refill as in flight and return the claim's timestamp; None when one
    already is. A claim older than ``REFILL_STALE_MINUTES`` (a worker that died) no longer blocks."""
    now = now or timezone.now()
    stale = now - timedelta(minutes=settings.PREFLOOP["REFILL_STALE_MINUTES"])
    claimed = (
        Campaign.objects.filter(pk=campaign_id)
        .filter(Q(refill_requested_at__isnull=True) | Q(refill_requested_at__lt=stale))
        .update(refill_requested_at=now)
    )
    return now if claimed else None


def campaign_refill_release(*, campaign_id: int, claim: datetime | None = None) -> None:
    """Release the refill claim; with ``claim``, only if it is still that one (a newer refill
    that took over a stale claim keeps its own)."""
    qs = Campaign.objects.filter(pk=campaign_id)
    if claim is not None:
        qs = qs.filter(refill_requested_at=claim)
    qs.update(refill_requested_at=None)


class SampledText(Protocol):
    """What a sampler returns per response (``training.sampling.Sample`` has these fields)."""

    text: str
    token_count: int
    finish_reason: str
    logprob_sum: float
    seed: int


def comparisons_create_sampled(
    *,
    campaign: Campaign,
    prompts: Sequence[Prompt],
    pairs: Sequence[tuple[SampledText, SampledText] | None],
    policy: ModelVersion,
    sampling_params: dict,
    arena_policy: ModelVersion | None = None,
) -> list[Comparison]:
    """Store sampled pairs as policy responses with full provenance and open comparisons, in
    one transaction. Response A is the policy's; B is the arena version's in arena mode.
    ``None`` entries (pairs the sampler gave up on) are skipped."""
    if len(prompts) != len(pairs):
        raise InvalidInput("One pair (or None) is needed per prompt.")
    limit = settings.PREFLOOP["MAX_TEXT_CHARS"]
    created = []
    with transaction.atomic():
        for prompt, pair in zip(prompts, pairs):
            if pair is None:
                continue
            if prompt.campaign_id != campaign.pk:
                raise InvalidInput(f"Prompt {prompt.pk} does not belong to campaign {campaign.slug}.")
            responses = [
                Response.objects.create(
                    prompt=prompt,
                    model_version=version,
                    source=Response.Source.POLICY,
                    text=sample.text[:limit],
                    text_hash=text_hash(sample.text[:limit]),
                    sampling_params=sampling_params,
                    seed=sample.seed,
                    token_count=sample.token_count,
                    logprob_sum=sample.logprob_sum,
                    finish_reason=sample.finish_reason,
                )
                for version, sample in zip((policy, arena_policy or policy), pair)
            ]
            created.append(comparison_create(campaign=campaign, prompt=prompt, response_a=responses[0], response_b=responses[1]))
    return created
