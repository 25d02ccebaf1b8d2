"""AI judges' votes: recorded as ordinary Votes with ``judge = "judge:<name>"`` and no
annotator. They never take an annotator's place (a comparison's ``vote_count`` and completion
count people only) and never reach annotators (who see their own votes only)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from annotation import selectors
from annotation.errors import InvalidInput
from annotation.models import Campaign, Choice, Comparison, Judge, Preference, Vote

VERDICT_KEYS = ("p_a", "p_b", "p_tie", "consistent", "order_choices", "latency_s", "prompt_tokens", "completion_tokens")


@dataclass
class JudgedReport:
    recorded: int  # new votes
    already: int  # comparisons the judge had voted on already (a second delivery)
    failed: list[str]  # "comparison 17: HTTP 500 ..." for verdicts that could not be given


def judge_votes_record(*, judge: Judge, verdicts: list[tuple[int, dict]]) -> JudgedReport:
    """Store ``(comparison id, verdict)`` pairs (``training.judges.Verdict.as_dict()``) as the
    judge's votes, in one transaction: choice, the verdict's details, the guideline it judged
    by, gold correctness on gold items. A verdict without a choice is reported, not stored; a
    comparison already judged by this judge keeps its first vote."""
    ids = [cid for cid, _ in verdicts]
    comparisons = {c.pk: c for c in Comparison.objects.filter(pk__in=ids, campaign_id=judge.campaign_id)}
    guideline = selectors.campaign_guideline(campaign=judge.campaign)
    rows, failed = [], []
    for cid, verdict in verdicts:
        comparison = comparisons.get(cid)
        if comparison is None:
            raise InvalidInput(f"Comparison {cid} is not in campaign '{judge.campaign.slug}'.", details={"comparison": cid})
        choice = verdict.get("choice") or ""
        if choice not in (Choice.A, Choice.B, Choice.TIE):
            failed.append(f"comparison {cid}: " + ("; ".join(verdict.get("errors") or []) or f"no verdict ({choice!r})"))
            continue
        rows.append(Vote(
            comparison=comparison, judge=judge.voter, choice=choice, guideline_version=guideline,
            judge_details={k: verdict.get(k) for k in VERDICT_KEYS},
            is_gold_correct=(choice == comparison.gold_answer) if comparison.kind == Comparison.Kind.GOLD else None,
        ))
    with transaction.atomic():
        before = Vote.objects.filter(judge=judge.voter, comparison_id__in=ids).count()
        Vote.objects.bulk_create(rows, ignore_conflicts=True)  # the unique (comparison, judge): first vote stands
        after = Vote.objects.filter(judge=judge.voter, comparison_id__in=ids).count()
    return JudgedReport(recorded=after - before, already=len(rows) - (after - before), failed=failed)


def judge_run_request(*, judge: Judge) -> None:
    """Queue the judge over its campaign's comparisons it has not voted on (after the commit)."""
    from annotation import enqueue

    if not judge.enabled:
        raise InvalidInput(f"Judge '{judge.name}' is switched off.", details={"judge": judge.name})
    remote = judge.kind == Judge.Kind.OPENAI
    transaction.on_commit(lambda: enqueue.judge_pending(judge.campaign_id, judge.pk, remote=remote))


def judge_preferences_derive(*, campaign: Campaign) -> int:
    """Preferences (source ``ai``) from the campaign's training judge's A/B verdicts on normal
    comparisons people have not decided (no preference, and not completed by people with a tie
    or "both bad"); returns how many were made. They enter training
    data only while the judge gate is open (``selectors.training_records``); when people
    complete such a comparison, their preference replaces the judge's."""
    judge = campaign.training_judge
    if judge is None:
        return 0
    people_decided = Q(comparison__status=Comparison.Status.COMPLETE) & Exists(
        Vote.objects.filter(comparison=OuterRef("comparison"), annotator__isnull=False))  # a tie or "both bad": no preference
    votes = (Vote.objects.filter(judge=judge.voter, choice__in=(Choice.A, Choice.B), comparison__campaign=campaign,
                                 comparison__kind=Comparison.Kind.NORMAL, comparison__preference__isnull=True)
             .exclude(people_decided)
             .select_related("comparison"))
    rows = []
    for vote in votes:
        c = vote.comparison
        chosen, rejected = (c.response_a_id, c.response_b_id) if vote.choice == Choice.A else (c.response_b_id, c.response_a_id)
        rows.append(Preference(campaign=campaign, prompt_id=c.prompt_id, chosen_id=chosen, rejected_id=rejected, comparison=c,
                               source=Preference.Source.AI, n_votes=1, n_chosen=1, agreement=1.0, margin=1.0))
    with transaction.atomic():
        before = Preference.objects.filter(campaign=campaign, source=Preference.Source.AI).count()
        Preference.objects.bulk_create(rows, ignore_conflicts=True)  # people completed one meanwhile: theirs stands
        return Preference.objects.filter(campaign=campaign, source=Preference.Source.AI).count() - before


JUDGE_FIELDS = ("kind", "model", "base_url", "api_key_env", "both_orders", "batch_size", "concurrency", "enabled")


def judge_save(*, campaign: Campaign, name: str, values: dict, judge: Judge | None = None) -> Judge:
    """Create the campaign's judge ``name`` (``judge`` None) or change ``judge``: the fields of
    ``JUDGE_FIELDS`` present in ``values``, validated as the admin validates them (``InvalidInput``
    with the field's message, nothing saved). A judge's name is its voter name: it never changes."""
    from django.core.exceptions import ValidationError

    unknown = set(values) - set(JUDGE_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown judge field(s): {', '.join(sorted(unknown))}.", details={"field": sorted(unknown)[0]})
    target = judge or Judge(campaign=campaign, name=name)
    if judge is not None and judge.campaign_id != campaign.pk:
        raise InvalidInput(f"Judge '{judge.name}' is not in campaign '{campaign.slug}'.")
    for key, value in values.items():
        setattr(target, key, value)
    try:
        target.full_clean(exclude=["campaign"] if judge else None)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(f"{field}: {' '.join(messages)}", details={"field": field, "errors": exc.message_dict}) from None
    with transaction.atomic():
        target.save()
    return target


def judge_gate_configure(*, campaign: Campaign, training_judge: Judge | None, min_agreement: float, min_comparisons: int) -> Campaign:
    """Set which judge may train (None: none) and the gate's thresholds."""
    if training_judge is not None and training_judge.campaign_id != campaign.pk:
        raise InvalidInput(f"Judge '{training_judge.name}' is not in campaign '{campaign.slug}'.", details={"field": "training_judge"})
    if not 0 <= min_agreement <= 1:
        raise InvalidInput("The minimum agreement must be between 0 and 1.", details={"field": "judge_gate_min_agreement"})
    if min_comparisons < 1:
        raise InvalidInput("The minimum number of comparisons must be at least 1.", details={"field": "judge_gate_min_comparisons"})
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        campaign.training_judge = training_judge
        campaign.judge_gate_min_agreement = min_agreement
        campaign.judge_gate_min_comparisons = min_comparisons
        campaign.save(update_fields=["training_judge", "judge_gate_min_agreement", "judge_gate_min_comparisons"])
    return campaign
