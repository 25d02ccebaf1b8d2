"""Campaigns and their guidelines, prompts, text responses and comparisons."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import AuditEvent, Campaign, Choice, Comparison, GuidelineVersion, Prompt, Response
from annotation.services.audit import audit_record
from training.formats import messages_hash, text_hash, validate_messages


def guideline_publish(*, campaign: Campaign, text: str, user: AbstractBaseUser | None = None) -> GuidelineVersion:
    """Publish ``text`` as the campaign's next guideline version (unchanged text: the current one)."""
    if not text.strip():
        raise InvalidInput("A guideline cannot be empty.")
    with transaction.atomic():
        # Lock the campaign so two editors cannot both write version n+1.
        Campaign.objects.select_for_update().get(pk=campaign.pk)
        current = campaign.guidelines.order_by("-version").first()
        if current and current.text == text:
            return current
        version = GuidelineVersion.objects.create(
            campaign=campaign,
            version=(current.version + 1) if current else 1,
            text=text,
            created_by=user if user and user.is_authenticated else None,
        )
        audit_record(actor=user, action=AuditEvent.Action.GUIDELINE_PUBLISH, campaign=campaign, target=f"version {version.version}",
                     details={"version": version.version, "chars": len(text)})
        return version


def campaign_create(*, slug: str, name: str, guideline: str, user: AbstractBaseUser | None = None, **fields) -> Campaign:
    with transaction.atomic():
        campaign = Campaign(slug=slug, name=name, **fields)
        campaign.full_clean()
        campaign.save()
        guideline_publish(campaign=campaign, text=guideline, user=user)
    return campaign


def prompt_get_or_create(
    *, campaign: Campaign, messages: list[dict], tags: Iterable[str] = (), split: str = Prompt.Split.TRAIN
) -> tuple[Prompt, bool]:
    messages = validate_messages(messages)
    return Prompt.objects.get_or_create(
        campaign=campaign,
        messages_hash=messages_hash(messages),
        defaults={"messages": messages, "tags": list(tags), "split": split},
    )


def response_get_or_create_text(*, prompt: Prompt, text: str, source: str = Response.Source.IMPORT) -> Response:
    """A response with no model behind it (imported or human-written), stored once per prompt."""
    response, _ = Response.objects.get_or_create(
        prompt=prompt, model_version=None, text_hash=text_hash(text), defaults={"text": text, "source": source}
    )
    return response


def comparison_create(
    *,
    campaign: Campaign,
    prompt: Prompt,
    response_a: Response,
    response_b: Response,
    kind: str = Comparison.Kind.NORMAL,
    gold_answer: str = "",
) -> Comparison:
    if response_a.prompt_id != prompt.pk or response_b.prompt_id != prompt.pk:
        raise InvalidInput("Both responses must answer the comparison's prompt.")
    if response_a.pk == response_b.pk:
        raise InvalidInput("A comparison needs two different responses.")
    if kind == Comparison.Kind.GOLD and gold_answer not in Choice.values:
        raise InvalidInput(f"A gold comparison needs a gold answer, one of {', '.join(Choice.values)}.")
    comparison, _ = Comparison.objects.get_or_create(
        campaign=campaign,
        response_a=response_a,
        response_b=response_b,
        defaults={
            "prompt": prompt,
            "kind": kind,
            "gold_answer": gold_answer if kind == Comparison.Kind.GOLD else "",
            "votes_required": campaign.votes_per_pair,
        },
    )
    return comparison
