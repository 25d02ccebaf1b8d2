"""Fair assignment: leasing comparisons to annotators, skips and lease expiry.

A lease is a few statements in one transaction (``assignment_next``): lock the membership, lock
a candidate comparison (SELECT ... FOR UPDATE SKIP LOCKED, with what the lease is shown with and
a lease the annotator already holds, if any), then one INSERT ... SELECT that re-checks the
candidate in a fresh statement, which sees every hand-out committed before our lock, and leases
it only if it still has a free slot."""

from __future__ import annotations

import random
import secrets
from collections import Counter
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import BigIntegerField, DateTimeField, Exists, F, IntegerField, OuterRef, Q, QuerySet, Subquery, TextField, Value
from django.utils import timezone

from annotation.errors import Conflict, Forbidden, InvalidInput, NotFound
from annotation.limits import MAX_SKIP_REASON_CHARS
from annotation.models import Assignment, Campaign, CampaignMembership, Comparison, GuidelineVersion, Prompt, Response
from annotation.prepared import Prepared, columns, instance, instances
from annotation.selectors import comparisons_open_to, sees_every_campaign

_rng = random.SystemRandom()
_SHOWN = ("prompt", "response_a", "response_b")  # what a lease is shown with


def _live_leases(now: datetime):
    return Q(state=Assignment.State.ACTIVE, expires_at__gt=now)


def _gold_due(*, campaign: Campaign, annotator: AbstractBaseUser) -> bool:
    """Each hand-out is gold with probability ``gold_rate``: random, so annotators cannot
    tell gold items by their position in the stream."""
    if campaign.gold_rate <= 0:
        return False
    return _rng.random() < campaign.gold_rate


def _held(*, campaign, annotator, now):
    """``annotator``'s live leases in ``campaign`` (either: an object or its id)."""
    return Assignment.objects.filter(_live_leases(now), annotator=annotator, campaign=campaign).order_by("leased_at")


_HELD = Prepared(lambda campaign, annotator, now: _held(campaign=campaign, annotator=annotator, now=now).values_list("pk")[:1],
                 campaign=int, annotator=int, now=datetime)

# The membership row, locked until the lease commits: an admin removing the member meanwhile
# waits for it, and then ends the new lease with the others (``campaign_members_remove``), or
# removes first and we see no row. Two requests of one annotator (a second tab) queue on it.
_MEMBER_LOCK = Prepared(
    lambda campaign, annotator: CampaignMembership.objects.select_for_update(no_key=True)
    .filter(campaign=campaign, user_id=annotator).values_list("pk"),
    campaign=int, annotator=int,
)


def assignment_next(
    *, campaign: Campaign, annotator: AbstractBaseUser, now: datetime | None = None
) -> Assignment | None:
    """Lease the next comparison of ``campaign`` to ``annotator``, or None when nothing is left.

    Fewest votes first; never the same comparison twice to one annotator; never more votes +
    active leases than ``votes_required`` (both counted on the comparison: ``Comparison.leased``,
    kept by every change of a lease's state here, in ``votes`` and ``members``); gold items mixed in at the campaign's gold rate while
    a normal item is open to the annotator (their progress counts both: ``annotator_progress``).
    Only a campaign's members (and reviewers and admins) work in it; the membership is checked
    and locked inside the lease's transaction.
    PostgreSQL: candidates are locked with SELECT ... FOR UPDATE SKIP LOCKED so concurrent
    annotators take different rows instead of queueing. SQLite: transactions are IMMEDIATE
    (settings), so hand-outs are serialised.
    """
    now = now or timezone.now()
    lease = _hand_out(campaign=campaign, annotator=annotator, now=now)
    # Nothing free: slots held by leases past their expiry come back now rather than at the next
    # sweep. In a transaction of its own, after the hand-out's: no lock of the hand-out is held
    # while the sweep waits for the comparisons' rows.
    if lease is None and assignments_expire(now=now, campaign=campaign):
        lease = _hand_out(campaign=campaign, annotator=annotator, now=now)
    return lease


def _hand_out(*, campaign: Campaign, annotator: AbstractBaseUser, now: datetime) -> Assignment | None:
    staff = sees_every_campaign(annotator)
    with transaction.atomic():
        if not staff and not _MEMBER_LOCK.rows(campaign=campaign.pk, annotator=annotator.pk):
            # 404, like an unknown slug (the API answers the same before reaching here): a campaign
            # someone is not a member of does not exist for them, so slugs cannot be probed.
            raise NotFound(f"No campaign '{campaign.slug}'.")
        if not campaign.is_active:
            raise Conflict(f"Campaign '{campaign.slug}' is not active.")
        return _lease(campaign=campaign, annotator=annotator, now=now)


def _held_lease(*, campaign, annotator, now) -> Assignment | None:
    """The lease ``annotator`` holds in ``campaign``, whole (rare: a reload, a second tab)."""
    return (_held(campaign=campaign, annotator=annotator, now=now)
            .select_related(*(f"comparison__{f}" for f in _SHOWN), "guideline_version").first())


def _lease(*, campaign: Campaign, annotator: AbstractBaseUser, now: datetime) -> Assignment | None:
    # Gold only beside normal work: with no normal item left for this annotator nothing is
    # handed out (their counter reads 0 then: ``annotator_progress``), so "nothing left" never
    # hides gold, and gold is not used up in one run whenever a batch runs dry.
    rejected: list[int] = []
    gold_due = campaign.gold_rate > 0 and _gold_due(campaign=campaign, annotator=annotator)
    while (normal := _lock_candidate(campaign=campaign, annotator=annotator, now=now, exclude=rejected)) is not None:
        if normal is HELD:
            return _held_lease(campaign=campaign, annotator=annotator, now=now)
        if gold_due:
            gold_due = False  # one try per hand-out: a gold item not leased below leaves the normal one
            gold_rejected: list[int] = []
            while (gold := _lock_candidate(campaign=campaign, annotator=annotator, now=now, exclude=gold_rejected,
                                           beside=normal.pk)) is not None:
                if (lease := _lease_insert(campaign=campaign, annotator=annotator, comparison=gold, now=now)):
                    return lease
                gold_rejected.append(gold.pk)
        if (lease := _lease_insert(campaign=campaign, annotator=annotator, comparison=normal, now=now)):
            return lease
        rejected.append(normal.pk)  # filled between our snapshot and our lock: try the next one
    return None


_CANDIDATE = ("pk", "campaign_id", "prompt_id", "response_a_id", "response_b_id", "kind", "gold_answer", "status",
              "votes_required", "vote_count", "prompt__messages", "response_a__text", "response_b__text",
              "guideline_id", "guideline_number", "guideline_text", "held")
HELD = object()  # ``_lock_candidate``'s answer when the annotator already holds a lease in the campaign


def _candidate_query(*, campaign, annotator, now, exclude=(), beside=None, skip_locked=True):
    """The first comparison open to ``annotator`` (fewest votes first, then lowest id), locked,
    with what it is shown with and the campaign's current guideline (``guideline_*``): the lock in
    a subquery that sorts ids only, the rest joined to the one row it returns. ``beside`` (gold):
    the normal candidate locked before, still open to them, checked in the same statement.
    ``held``: a live lease the annotator holds in the campaign already (a reload, a second tab),
    read in this statement, after the membership lock, so it sees a lease that a request holding
    that lock before us committed (the locking statement's own snapshot predates its wait).
    ``vote_count`` and ``status`` are as of the statement's snapshot: ``_lease_insert`` re-checks."""
    kind = Comparison.Kind.NORMAL if beside is None else Comparison.Kind.GOLD
    qs = comparisons_open_to(campaign=campaign, annotator=annotator, kind=kind)
    if exclude:
        qs = qs.exclude(pk__in=exclude)
    if beside is not None:
        qs = qs.filter(Exists(comparisons_open_to(campaign=campaign, annotator=annotator).filter(pk=beside)))
    locked = qs.order_by("vote_count", "pk").values("pk")[:1].select_for_update(skip_locked=skip_locked, of=("self",))
    guideline = GuidelineVersion.objects.filter(campaign=OuterRef("campaign")).order_by("-version")[:1]
    return Comparison.objects.filter(pk__in=Subquery(locked)).annotate(
        guideline_id=Subquery(guideline.values("pk"), output_field=IntegerField()),
        guideline_number=Subquery(guideline.values("version"), output_field=IntegerField()),
        guideline_text=Subquery(guideline.values("text"), output_field=TextField()),
        # asked on a hand-out's first try only (``_lock_candidate``): not beside gold, not after a race lost
        held=Subquery(_held(campaign=campaign, annotator=annotator, now=now).values("pk")[:1], output_field=BigIntegerField())
        if beside is None and not exclude else Value(None, BigIntegerField()),
    ).values_list(*_CANDIDATE)[:1]


_CANDIDATES = {
    (gold, skip): Prepared(
        # gold: no lease held is asked beside it, so no clock
        (lambda campaign, annotator, beside, skip=skip: _candidate_query(
            campaign=campaign, annotator=annotator, now=None, beside=beside, skip_locked=skip)) if gold else
        (lambda campaign, annotator, now, skip=skip: _candidate_query(campaign=campaign, annotator=annotator, now=now, skip_locked=skip)),
        campaign=int, annotator=int, **({"beside": int} if gold else {"now": datetime}),
    )
    for gold in (False, True) for skip in (True, False)
}


def _lock_candidate(*, campaign, annotator, now, exclude, beside=None) -> Comparison | object | None:
    """Lock and read the next candidate (``_candidate_query``): skipping locked rows, and when
    that finds none, waiting for one (everything left may be locked only for a moment by another
    hand-out or vote: not "nothing left" too early). ``HELD`` when the annotator holds a lease
    already (first try of a hand-out only; with no candidate, asked on its own before waiting).
    Compiled once (``Prepared``) unless a candidate was rejected in this hand-out already (rare:
    a race lost)."""
    first = not exclude and beside is None
    for skip in (True, False):
        if exclude:
            rows = list(_candidate_query(campaign=campaign, annotator=annotator, now=now, exclude=exclude, beside=beside,
                                         skip_locked=skip))
        else:
            more = {} if beside is None else {"beside": beside}
            rows = _CANDIDATES[beside is not None, skip].rows(campaign=campaign.pk, annotator=annotator.pk, now=now, **more)
        if rows:
            row = dict(zip(_CANDIDATE, rows[0]))
            return HELD if first and row["held"] is not None else _shown(row)
        if first and skip and _HELD.rows(campaign=campaign.pk, annotator=annotator.pk, now=now):
            return HELD  # nothing open (or all locked for now): a lease held is answered without waiting
    return None


def _shown(row: dict) -> Comparison:
    comparison = instance(Comparison, **{f if f != "pk" else "id": row[f] for f in _CANDIDATE[:10]})
    comparison.prompt = instance(Prompt, id=row["prompt_id"], messages=row["prompt__messages"])
    comparison.response_a = instance(Response, id=row["response_a_id"], text=row["response_a__text"])
    comparison.response_b = instance(Response, id=row["response_b_id"], text=row["response_b__text"])
    comparison.guideline = None
    if row["guideline_id"] is not None:
        comparison.guideline = instance(GuidelineVersion, id=row["guideline_id"], campaign_id=row["campaign_id"],
                                        version=row["guideline_number"], text=row["guideline_text"])
    return comparison


_LEASE_COLUMNS = ("comparison_id", "campaign_id", "annotator_id", "order", "state", "guideline_version_id", "leased_at", "expires_at", "skip_reason")


def _insert_query(*, campaign, annotator, now, comparison, order, guideline, expires_at, kind):
    """INSERT ... SELECT: the lease of ``comparison`` if this fresh statement (it sees every
    hand-out committed before our lock) still finds it open to ``annotator`` with a free slot."""
    values = {
        "comparison_id": F("pk"), "campaign_id": F("campaign_id"), "annotator_id": Value(annotator), "order": Value(order),
        "state": Value(Assignment.State.ACTIVE), "guideline_version_id": Value(guideline, BigIntegerField()),
        "leased_at": Value(now, DateTimeField()), "expires_at": Value(expires_at, DateTimeField()), "skip_reason": Value(""),
    }
    select = (comparisons_open_to(campaign=campaign, annotator=annotator, kind=kind)
              .filter(pk=comparison).order_by().annotate(**{f"v_{k}": v for k, v in values.items()})
              .values_list(*(f"v_{k}" for k in values)))
    qn = connection.ops.quote_name
    # ON CONFLICT: a second tab of a reviewer or admin (no membership row to serialise on) won the race.
    insert = (f"INSERT INTO {qn(Assignment._meta.db_table)} ({', '.join(qn(c) for c in _LEASE_COLUMNS)}) {{select}} "
              f"ON CONFLICT DO NOTHING RETURNING {qn('id')}, {qn('comparison_id')}")
    if connection.vendor != "postgresql":  # SQLite cannot modify rows in a WITH: ``_lease_insert`` counts the slot
        return select, insert
    # the slot counted in the same statement (the comparison's row is ours: locked by the candidate's)
    table = qn(Comparison._meta.db_table)
    return select, (f"WITH lease AS ({insert}), slot AS (UPDATE {table} SET {qn('leased')} = {qn('leased')} + 1 FROM lease "
                    f"WHERE {table}.{qn('id')} = lease.{qn('comparison_id')}) SELECT {qn('id')}, {qn('comparison_id')} FROM lease")


_INSERTS = {
    kind: Prepared(lambda kind=kind, **inputs: _insert_query(kind=kind, **inputs), campaign=int, annotator=int, now=datetime,
                   comparison=int, order=str, guideline=int, expires_at=datetime)
    for kind in Comparison.Kind.values
}


def _lease_insert(*, campaign, annotator, comparison: Comparison, now: datetime) -> Assignment | None:
    """Lease the locked ``comparison`` (``_insert_query``); None when its slot was taken meanwhile."""
    order = secrets.choice(Assignment.Order.values)
    expires_at = now + timedelta(minutes=campaign.lease_minutes)
    guideline = comparison.guideline
    rows = _INSERTS[comparison.kind].rows(campaign=campaign.pk, annotator=annotator.pk, now=now, comparison=comparison.pk,
                                          order=order, guideline=guideline.pk if guideline else None, expires_at=expires_at)
    if not rows:
        return None
    if connection.vendor != "postgresql":
        Comparison.objects.filter(pk=comparison.pk).update(leased=F("leased") + 1)
    lease = instance(Assignment, id=rows[0][0], comparison_id=comparison.pk, campaign_id=campaign.pk, annotator_id=annotator.pk, order=order,
                     state=Assignment.State.ACTIVE, guideline_version_id=guideline.pk if guideline else None, leased_at=now,
                     expires_at=expires_at, skip_reason="")
    lease.comparison, lease.annotator, lease.guideline_version = comparison, annotator, guideline
    return lease


def assignments_expire(*, now: datetime | None = None, campaign: Campaign | None = None) -> int:
    """End the leases past their expiry (of ``campaign``, or of all): their slots come back
    (``Comparison.leased``). Every minute (beat), and when a hand-out finds nothing else. A lease
    locked by its vote or skip in progress is left to it. Returns how many ended."""
    leases = Assignment.objects.filter(expires_at__lte=now or timezone.now())
    return leases_end(leases=leases if campaign is None else leases.filter(campaign=campaign), state=Assignment.State.EXPIRED,
                      skip_locked=True)


def leases_end(*, leases: QuerySet[Assignment], state: str, skip_locked: bool = False) -> int:
    """End the active leases among ``leases`` (``state``: expired, when swept or their annotator
    left the campaign) and give their slots back: each comparison's ``leased`` drops with them, in
    one transaction. ``skip_locked``: leave the leases that a vote or skip is ending right now to it
    (the sweep; a removal waits for them). Returns how many ended."""
    with transaction.atomic():
        ended = list(leases.filter(state=Assignment.State.ACTIVE).order_by("pk").select_for_update(skip_locked=skip_locked, of=("self",))
                     .values_list("pk", "comparison_id"))
        if not ended:
            return 0
        Assignment.objects.filter(pk__in=[pk for pk, _ in ended]).update(state=state)
        by_count: dict[int, list[int]] = {}  # leases ended -> the comparisons that lost that many
        for comparison_id, n in Counter(c for _, c in ended).items():
            by_count.setdefault(n, []).append(comparison_id)
        for n, comparisons in by_count.items():
            Comparison.objects.filter(pk__in=comparisons).update(leased=F("leased") - n)
    return len(ended)


# The lease, its comparison and campaign, and whether the annotator is (still) a member.
_OWN_PARTS = ((Assignment, ""), (Comparison, "comparison__"), (Campaign, "comparison__campaign__"))


def _own_query(*, assignment, annotator):
    qs = (Assignment.objects.filter(pk=assignment)
          .annotate(member=Exists(CampaignMembership.objects.filter(campaign=OuterRef("campaign"), user_id=annotator)))
          .values_list(*(c for model, prefix in _OWN_PARTS for c in columns(model, prefix)), "member"))
    if not connection.features.has_select_for_update_of:  # SQLite: its IMMEDIATE transaction holds the write lock
        return qs
    # the lease's and the comparison's rows (the ORM locks joined rows only with select_related)
    qn = connection.ops.quote_name
    return qs, f"{{select}} FOR UPDATE OF {qn(Assignment._meta.db_table)}, {qn(Comparison._meta.db_table)}"


_OWN = Prepared(_own_query, assignment=int, annotator=int)


def _locked_own_assignment(*, annotator: AbstractBaseUser, assignment_id: int) -> Assignment:
    """The annotator's own lease and its comparison, locked (their rows as committed last; not the
    campaign's), in a campaign they may still work in (votes and skips). One statement, compiled
    once (``Prepared``)."""
    rows = _OWN.rows(assignment=assignment_id, annotator=annotator.pk)
    if not rows:
        raise NotFound(f"Assignment {assignment_id} does not exist.")
    assignment, comparison, campaign, (member,) = instances(rows[0], *(model for model, _ in _OWN_PARTS))
    assignment.comparison, comparison.campaign = comparison, campaign
    if assignment.annotator_id != annotator.pk:
        raise Forbidden("This assignment belongs to another annotator.")
    if not (member or sees_every_campaign(annotator)):
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
        Comparison.objects.filter(pk=assignment.comparison_id).update(leased=F("leased") - 1)  # its row is locked with the lease
    return assignment
