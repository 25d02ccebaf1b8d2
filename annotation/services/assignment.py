"""Fair assignment: leasing comparisons to annotators, skips and lease expiry."""

from __future__ import annotations

import random
import secrets
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.errors import Conflict, Forbidden, InvalidInput, NotFound
from annotation.limits import MAX_SKIP_REASON_CHARS
from annotation.models import Assignment, Campaign, Comparison
from annotation.selectors import campaign_open_to, comparisons_open_to

_rng = random.SystemRandom()


def _live_leases(now: datetime):
    return Q(state=Assignment.State.ACTIVE, expires_at__gt=now)


def _gold_due(*, campaign: Campaign, annotator: AbstractBaseUser) -> bool:
    """Each hand-out is gold with probability ``gold_rate``: random, so annotators cannot
    tell gold items by their position in the stream."""
    if campaign.gold_rate <= 0:
        return False
    return _rng.random() < campaign.gold_rate


def _candidates(*, campaign: Campaign, annotator: AbstractBaseUser, kind: str, now: datetime, exclude: set[int]):
    qs = comparisons_open_to(campaign=campaign, annotator=annotator, kind=kind, now=now)
    return qs.exclude(pk__in=exclude).order_by("vote_count", "pk")


def _has_free_slot(*, comparison_id: int, annotator: AbstractBaseUser, now: datetime) -> Comparison | None:
    """Re-check a locked candidate in fresh statements: see every hand-out committed before our lock."""
    # with what the lease is shown with (prompt, both responses): no further query to answer it
    comparison = Comparison.objects.select_related("prompt", "response_a", "response_b").get(pk=comparison_id)
    if comparison.status != Comparison.Status.OPEN:
        return None
    if Assignment.objects.filter(comparison=comparison, annotator=annotator).exists():
        return None
    if comparison.kind == Comparison.Kind.NORMAL:
        live = Assignment.objects.filter(_live_leases(now), comparison=comparison).count()
        if comparison.vote_count + live >= comparison.votes_required:
            return None
    return comparison


def assignment_next(
    *, campaign: Campaign, annotator: AbstractBaseUser, now: datetime | None = None
) -> Assignment | None:
    """Lease the next comparison of ``campaign`` to ``annotator``, or None when nothing is left.

    Fewest votes first; never the same comparison twice to one annotator; never more live
    leases + votes than ``votes_required``; gold items mixed in at the campaign's gold rate while
    a normal item is open to the annotator (their progress counts both: ``annotator_progress``).
    Only a campaign's members (and reviewers and admins) work in it.
    PostgreSQL: candidates are locked with SELECT ... FOR UPDATE SKIP LOCKED so concurrent
    annotators take different rows instead of queueing. SQLite: transactions are IMMEDIATE
    (settings), so hand-outs are serialised.
    """
    now = now or timezone.now()
    if not campaign_open_to(campaign=campaign, user=annotator):
        # 404, like an unknown slug (the API answers the same before reaching here): a campaign
        # someone is not a member of does not exist for them, so slugs cannot be probed.
        raise NotFound(f"No campaign '{campaign.slug}'.")
    if not campaign.is_active:
        raise Conflict(f"Campaign '{campaign.slug}' is not active.")
    with transaction.atomic():
        held = (
            Assignment.objects.filter(_live_leases(now), annotator=annotator, comparison__campaign=campaign)
            .select_related("comparison__prompt", "comparison__response_a", "comparison__response_b", "guideline_version")
            .order_by("leased_at")
            .first()
        )
        if held:  # a reload or a second tab gets the lease it already holds
            return held
        # Gold only beside normal work: with no normal item left for this annotator nothing is
        # handed out (their counter reads 0 then: ``annotator_progress``), so "nothing left" never
        # hides gold, and gold is not used up in one run whenever a batch runs dry.
        comparison = _lock_candidate(campaign=campaign, annotator=annotator, kind=Comparison.Kind.NORMAL, now=now)
        if comparison is None:
            return None
        if campaign.gold_rate > 0 and _gold_due(campaign=campaign, annotator=annotator):
            comparison = _lock_candidate(campaign=campaign, annotator=annotator, kind=Comparison.Kind.GOLD, now=now) or comparison
        guideline = campaign.guidelines.order_by("-version").first()
        return Assignment.objects.create(
            comparison=comparison,
            annotator=annotator,
            order=secrets.choice(Assignment.Order.values),
            guideline_version=guideline,
            leased_at=now,
            expires_at=now + timedelta(minutes=campaign.lease_minutes),
        )


def _lock_candidate(*, campaign, annotator, kind, now) -> Comparison | None:
    rejected: set[int] = set()
    while True:
        qs = _candidates(campaign=campaign, annotator=annotator, kind=kind, now=now, exclude=rejected)
        pk = qs.select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True).first()
        if pk is None:
            # Everything left may only be locked for a moment by another hand-out or vote:
            # wait for one such row instead of answering "nothing left" too early.
            pk = qs.select_for_update(of=("self",)).values_list("pk", flat=True).first()
        if pk is None:
            return None
        comparison = _has_free_slot(comparison_id=pk, annotator=annotator, now=now)
        if comparison:
            return comparison
        rejected.add(pk)  # filled between our snapshot and our lock: try the next one


def assignments_expire(*, now: datetime | None = None) -> int:
    """Mark leases past their expiry as expired (housekeeping; expiry is already honoured by time)."""
    now = now or timezone.now()
    return Assignment.objects.filter(state=Assignment.State.ACTIVE, expires_at__lte=now).update(
        state=Assignment.State.EXPIRED
    )


def _locked_own_assignment(*, annotator: AbstractBaseUser, assignment_id: int) -> Assignment:
    """The annotator's own lease, locked, in a campaign they may still work in (votes and skips)."""
    try:
        assignment = (
            Assignment.objects.select_for_update(of=("self", "comparison"))  # not the campaign row
            .select_related("comparison__campaign")
            .get(pk=assignment_id)
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"Assignment {assignment_id} does not exist.") from None
    if assignment.annotator_id != annotator.pk:
        raise Forbidden("This assignment belongs to another annotator.")
    campaign = assignment.comparison.campaign
    if not campaign_open_to(campaign=campaign, user=annotator):
        # 403, not 404: the lease is theirs, so they know the campaign exists; say why it ended.
        raise Forbidden(f"You are no longer a member of campaign '{campaign.slug}': this lease is void.",
                        details={"campaign": campaign.slug})
    return assignment


def assignment_skip(*, annotator: AbstractBaseUser, assignment_id: int, reason: str) -> Assignment:
    """Give a leased comparison back with a reason; it is not offered to this annotator again."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why you skip this comparison.", details={"field": "reason"})
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise InvalidInput(f"The skip reason is too long (limit {MAX_SKIP_REASON_CHARS} characters).", details={"field": "reason"})
    with transaction.atomic():
        assignment = _locked_own_assignment(annotator=annotator, assignment_id=assignment_id)
        if assignment.state != Assignment.State.ACTIVE:
            raise Conflict(f"This assignment is already {assignment.state}.")
        assignment.state = Assignment.State.SKIPPED
        assignment.skip_reason = reason
        assignment.save(update_fields=["state", "skip_reason"])
    return assignment

