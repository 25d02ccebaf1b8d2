"""Votes and the preferences they make: recording a vote, aggregating a comparison's votes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import BooleanField, DateTimeField, F, FloatField, JSONField, Value
from django.db.models.functions import Cast
from django.utils import timezone

from annotation.errors import AlreadyVoted, ComparisonClosed, InvalidInput, LeaseExpired
from annotation.limits import MAX_RATIONALE_CHARS, MAX_SECONDS_SPENT
from annotation.models import Assignment, Campaign, Choice, Comparison, Preference, Strength, Vote
from annotation.prepared import Prepared
from annotation.services.assignment import _locked_own_assignment


def _canonical_choice(shown_choice: str, order: str) -> str:
    """The annotator picks by position shown (a = left); store the choice in A/B terms."""
    if order == Assignment.Order.BA and shown_choice in (Choice.A, Choice.B):
        return Choice.B if shown_choice == Choice.A else Choice.A
    return shown_choice


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    created: bool
    preference: Preference | None = None
    campaign: Campaign | None = None  # the comparison's


def vote_submit(
    *,
    annotator: AbstractBaseUser,
    assignment_id: int,
    choice: str,
    strength: str = "",
    rationale: str = "",
    seconds_spent: float | None = None,
    now: datetime | None = None,
) -> VoteResult:
    """Record an annotator's vote on a leased comparison. ``choice`` is in shown terms (a = left).

    Idempotent: the same vote submitted twice stores one vote (created=False); a different
    vote on the same assignment is refused.
    """
    if choice not in Choice.values:
        raise InvalidInput(f"choice must be one of {', '.join(Choice.values)}.", details={"field": "choice"})
    if strength not in ("", *Strength.values):
        raise InvalidInput(f"strength must be one of {', '.join(Strength.values)} or empty.", details={"field": "strength"})
    if strength and choice not in (Choice.A, Choice.B):
        raise InvalidInput("strength applies only to an A or B choice.", details={"field": "strength"})
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise InvalidInput(
            f"rationale is too long ({len(rationale)} characters, limit {MAX_RATIONALE_CHARS}).", details={"field": "rationale"}
        )
    if seconds_spent is not None and not (0 <= seconds_spent <= MAX_SECONDS_SPENT and math.isfinite(seconds_spent)):
        raise InvalidInput(f"seconds_spent must be between 0 and {MAX_SECONDS_SPENT}.", details={"field": "seconds_spent"})

    with transaction.atomic():
        # The lease and its comparison, locked (assignment first, then comparison: the hand-out
        # order), as committed last; the clock read only now: a vote that waited for the locks is
        # judged at commit time.
        assignment = _locked_own_assignment(annotator=annotator, assignment_id=assignment_id)
        comparison = assignment.comparison
        now = now or timezone.now()
        canonical = _canonical_choice(choice, assignment.order)
        # A vote ends its lease in the same transaction: an active lease has none yet.
        existing = None if assignment.state == Assignment.State.ACTIVE else Vote.objects.filter(assignment=assignment).first()
        if existing:
            if existing.choice == canonical and existing.strength == strength:
                return VoteResult(vote=existing, created=False, campaign=comparison.campaign)
            raise AlreadyVoted("You already voted on this comparison with a different answer.", details={"vote_id": existing.pk})
        if comparison.status != Comparison.Status.OPEN:
            raise ComparisonClosed("This comparison is closed.")
        if assignment.state != Assignment.State.ACTIVE or assignment.expires_at <= now:
            raise LeaseExpired(
                "Your lease on this comparison has ended; it went back to the pool.",
                details={"state": assignment.state, "expired_at": assignment.expires_at.isoformat()},
            )
        vote = Vote(
            comparison=comparison,
            annotator=annotator,
            assignment=assignment,
            choice=canonical,
            strength=strength,
            rationale=rationale.strip(),
            guideline_version_id=assignment.guideline_version_id,
            order_shown=assignment.order,
            seconds_spent=seconds_spent,
            is_gold_correct=(canonical == comparison.gold_answer) if comparison.kind == Comparison.Kind.GOLD else None,
            created_at=timezone.now(),  # (what auto_now_add sets)
        )
        assignment.state = Assignment.State.DONE
        # The comparison row is locked: its counts are exact, no read-back needed. The lease, active
        # until now, becomes the vote: its slot stays taken.
        comparison.vote_count += 1
        comparison.leased -= 1
        complete = comparison.kind == Comparison.Kind.NORMAL and comparison.vote_count >= comparison.votes_required
        if complete:
            comparison.status, comparison.completed_at = Comparison.Status.COMPLETE, now
        _vote_store(vote=vote, assignment=assignment, comparison=comparison)
        preference = _comparison_complete(comparison=comparison) if complete else None
    return VoteResult(vote=vote, created=True, preference=preference, campaign=comparison.campaign)


_VOTE_COLUMNS = [f.attname for f in Vote._meta.concrete_fields if not f.primary_key]
_COUNTS = ("vote_count", "leased", "status", "completed_at")  # what a vote changes on its comparison


def _write_query(*, assignment, choice, strength, rationale, seconds_spent, is_gold_correct, created_at, vote_count, leased, status,
                 completed_at):
    """PostgreSQL: the vote's row, its lease done and its comparison's counts in one statement. The
    values are one row selected from the lease (``s``): the vote's columns (``v_*``), the lease's
    new state and the comparison's new counts, all decided by ``vote_submit``."""
    vote = {"comparison_id": F("comparison_id"), "annotator_id": F("annotator_id"), "judge": Value(""), "assignment_id": F("pk"),
            "choice": Value(choice), "strength": Value(strength), "rationale": Value(rationale),
            "guideline_version_id": F("guideline_version_id"), "order_shown": F("order"),
            "seconds_spent": Cast(Value(seconds_spent), FloatField()), "is_gold_correct": Cast(Value(is_gold_correct), BooleanField()),
            "judge_details": Value({}, JSONField()), "created_at": Value(created_at, DateTimeField())}
    assert list(vote) == _VOTE_COLUMNS, "a Vote column without a value here"
    counts = {"vote_count": Value(vote_count), "leased": Value(leased), "status": Value(status),
              "completed_at": Cast(Value(completed_at), DateTimeField())}
    assert list(counts) == list(_COUNTS)
    select = Assignment.objects.filter(pk=assignment).annotate(
        **{f"v_{k}": v for k, v in vote.items()}, a_state=Value(Assignment.State.DONE), **{f"c_{k}": v for k, v in counts.items()},
    ).values_list(*(f"v_{k}" for k in vote), "a_state", *(f"c_{k}" for k in counts))
    qn = connection.ops.quote_name
    cols = ", ".join(qn(c) for c in _VOTE_COLUMNS)
    return select, (
        f"WITH s AS ({{select}}), "
        f"v AS (INSERT INTO {qn(Vote._meta.db_table)} ({cols}) SELECT {', '.join(f's.v_{c}' for c in _VOTE_COLUMNS)} FROM s RETURNING id), "
        f"a AS (UPDATE {qn(Assignment._meta.db_table)} SET {qn('state')} = s.a_state FROM s WHERE {qn('id')} = s.v_assignment_id), "
        f"c AS (UPDATE {qn(Comparison._meta.db_table)} SET {', '.join(f'{qn(k)} = s.c_{k}' for k in _COUNTS)} "
        f"FROM s WHERE {qn('id')} = s.v_comparison_id) "
        f"SELECT id FROM v"
    )


_WRITE = Prepared(_write_query, assignment=int, choice=str, strength=str, rationale=str, seconds_spent=float, is_gold_correct=bool,
                  created_at=datetime, vote_count=int, leased=int, status=str, completed_at=datetime)


def _vote_store(*, vote: Vote, assignment: Assignment, comparison: Comparison) -> None:
    """Write ``vote``, ``assignment``'s state and ``comparison``'s counts, as set on them (both rows
    locked by the caller). On PostgreSQL one statement, compiled once (``Prepared``); elsewhere
    (SQLite cannot modify rows in a WITH) three."""
    if connection.vendor != "postgresql":
        vote.save(force_insert=True)
        Assignment.objects.filter(pk=assignment.pk).update(state=assignment.state)
        Comparison.objects.filter(pk=comparison.pk).update(**{k: getattr(comparison, k) for k in _COUNTS})
        return
    rows = _WRITE.rows(assignment=assignment.pk, choice=vote.choice, strength=vote.strength, rationale=vote.rationale,
                       seconds_spent=vote.seconds_spent, is_gold_correct=vote.is_gold_correct, created_at=vote.created_at,
                       vote_count=comparison.vote_count, leased=comparison.leased, status=comparison.status,
                       completed_at=comparison.completed_at)
    vote.pk = rows[0][0]
    vote._state.adding, vote._state.db = False, connection.alias


@dataclass(frozen=True)
class Aggregate:
    """Votes on one comparison, and the preference they support (winner None: no majority)."""

    n_a: int
    n_b: int
    n_tie: int
    n_both_bad: int
    winner: str | None = field(default=None)

    @property
    def n_votes(self) -> int:
        return self.n_a + self.n_b + self.n_tie + self.n_both_bad

    @property
    def agreement(self) -> float | None:
        """Share of all votes that went to the winner."""
        if self.winner is None or not self.n_votes:
            return None
        return max(self.n_a, self.n_b) / self.n_votes

    @property
    def margin(self) -> float | None:
        """(winner votes - loser votes) / all votes: 1 is unanimous, near 0 is contested."""
        if self.winner is None or not self.n_votes:
            return None
        return abs(self.n_a - self.n_b) / self.n_votes


def votes_aggregate(choices: Iterable[str]) -> Aggregate:
    """Majority of the A/B votes; ties and both-bad are counted but pick no winner."""
    choices = list(choices)
    n_a, n_b = choices.count(Choice.A), choices.count(Choice.B)
    winner = Choice.A if n_a > n_b else Choice.B if n_b > n_a else None
    return Aggregate(n_a, n_b, choices.count(Choice.TIE), choices.count(Choice.BOTH_BAD), winner)


def _comparison_complete(*, comparison: Comparison) -> Preference | None:
    """The preference of a comparison just completed (its status already saved)."""
    # People's votes only: AI judges' votes enter training data through the judge gate, never here.
    votes = list(comparison.votes.filter(annotator__isnull=False).values_list("choice", "annotator_id"))
    agg = votes_aggregate(c for c, _ in votes)
    # People decided: their verdict replaces a judge's, also when it is a tie or "both bad".
    Preference.objects.filter(comparison=comparison, source=Preference.Source.AI).delete()
    if agg.winner is None:
        return None
    a, b = comparison.response_a_id, comparison.response_b_id
    chosen, rejected = (a, b) if agg.winner == Choice.A else (b, a)
    n_chosen, n_rejected = (agg.n_a, agg.n_b) if agg.winner == Choice.A else (agg.n_b, agg.n_a)
    human = any(annotator_id is not None for _, annotator_id in votes)
    return Preference.objects.create(
        campaign_id=comparison.campaign_id,
        prompt_id=comparison.prompt_id,
        chosen_id=chosen,
        rejected_id=rejected,
        comparison=comparison,
        source=Preference.Source.HUMAN if human else Preference.Source.AI,
        n_votes=agg.n_votes,
        n_chosen=n_chosen,
        n_rejected=n_rejected,
        n_tie=agg.n_tie,
        n_both_bad=agg.n_both_bad,
        agreement=agg.agreement,
        margin=agg.margin,
    )

