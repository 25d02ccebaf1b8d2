"""Every write of the annotation app. Keyword-only, typed, transactional (HackSoft styleguide)."""

from __future__ import annotations

import csv
import io
import math
import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from annotation.errors import AlreadyVoted, ComparisonClosed, Conflict, Forbidden, InvalidInput, LeaseExpired, NotFound
from annotation.selectors import comparisons_open_to
from annotation.models import (
    Assignment,
    Campaign,
    Choice,
    Comparison,
    GuidelineVersion,
    ModelVersion,
    Preference,
    TrainingRun,
    Prompt,
    Response,
    Strength,
    Vote,
)
from training.formats import (
    PREFERENCE_READERS,
    FormatError,
    PreferenceRecord,
    messages_hash,
    parse_json_line,
    prompt_from_row,
    text_hash,
    validate_messages,
)

# ---------------------------------------------------------------- campaigns and guidelines


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
        return GuidelineVersion.objects.create(
            campaign=campaign,
            version=(current.version + 1) if current else 1,
            text=text,
            created_by=user if user and user.is_authenticated else None,
        )


def campaign_create(*, slug: str, name: str, guideline: str, user: AbstractBaseUser | None = None, **fields) -> Campaign:
    with transaction.atomic():
        campaign = Campaign(slug=slug, name=name, **fields)
        campaign.full_clean()
        campaign.save()
        guideline_publish(campaign=campaign, text=guideline, user=user)
    return campaign


# ---------------------------------------------------------------- prompts, responses, comparisons


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


# ---------------------------------------------------------------- policies and sampled pairs


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


# ---------------------------------------------------------------- training runs


def training_run_create(*, campaign: Campaign, kind: str, config: dict | None = None, base_version: ModelVersion | None = None) -> TrainingRun:
    """Queue a training run on the campaign's preferences, from ``base_version`` (default: the
    campaign's active policy). The gpu worker validates the config when it starts the run."""
    if kind not in (TrainingRun.Kind.SFT, TrainingRun.Kind.REWARD, TrainingRun.Kind.DPO):
        raise InvalidInput(f"Unknown training kind {kind!r}; one of sft, reward, dpo.")
    if config is not None and not isinstance(config, dict):
        raise InvalidInput("A training config must be a JSON object.")
    from workers.tasks import gpu_train  # torch-free import: the task loads training code when it runs

    with transaction.atomic():
        base = base_version or campaign_policy_ensure(campaign=campaign)
        run = TrainingRun.objects.create(kind=kind, campaign=campaign, config=config or {}, base_version=base)
        transaction.on_commit(lambda: gpu_train.delay(run.pk))
    return run


def _finite(value):
    """JSON that PostgreSQL's jsonb accepts: NaN / ±inf (a diverged loss) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def training_run_start(*, run_id: int, device: str, data_manifest: dict) -> TrainingRun | None:
    """Mark a queued run as running (a running one stays running: its task was redelivered
    after a worker died, and resumes); None when it was cancelled or has finished."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
            return None
        run.status, run.device, run.data_manifest = TrainingRun.Status.RUNNING, device, data_manifest
        run.started_at = run.started_at or timezone.now()
        run.save(update_fields=["status", "device", "data_manifest", "started_at"])
    return run


def training_run_log(*, run_id: int, metrics: dict) -> None:
    """Append one metrics row (a step's losses and rewards) to the run, under a row lock."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().only("metrics").get(pk=run_id)
        run.metrics = [*run.metrics, _finite(metrics)]
        run.save(update_fields=["metrics"])


def training_run_cancel(*, run_id: int) -> TrainingRun:
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
            run.status = TrainingRun.Status.CANCELLED
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "finished_at"])
    return run


def training_run_finish(
    *, run_id: int, status: str, error: str = "", artifact_path: str = "", final_metrics: dict | None = None
) -> ModelVersion | None:
    """Close a run; a successful one registers its output as a new ModelVersion (parent: the
    run's base version), in the same transaction."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().select_related("base_version").get(pk=run_id)
        if run.status == TrainingRun.Status.CANCELLED:
            status = TrainingRun.Status.CANCELLED  # cancelled while it ran or failed: what the admin asked for stands
        run.status, run.error, run.finished_at = status, error[:10_000], timezone.now()
        run.save(update_fields=["status", "error", "finished_at"])
        if status != TrainingRun.Status.SUCCEEDED:
            return None
        base = run.base_version
        suffix = f"+{run.kind}-{run.pk}"
        return ModelVersion.objects.create(
            name=base.name[: 200 - len(suffix)] + suffix,
            kind=ModelVersion.Kind.REWARD if run.kind == TrainingRun.Kind.REWARD else ModelVersion.Kind.POLICY,
            base=base.base,
            parent=base,
            artifact_path=artifact_path,
            training_run=run,
            metrics=_finite(final_metrics or {}),
        )


# ---------------------------------------------------------------- fair assignment

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
    comparison = Comparison.objects.get(pk=comparison_id)
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
    leases + votes than ``votes_required``; gold items mixed in at the campaign's gold rate.
    PostgreSQL: candidates are locked with SELECT ... FOR UPDATE SKIP LOCKED so concurrent
    annotators take different rows instead of queueing. SQLite: transactions are IMMEDIATE
    (settings), so hand-outs are serialised.
    """
    now = now or timezone.now()
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
        kinds = [Comparison.Kind.NORMAL]
        if _gold_due(campaign=campaign, annotator=annotator):
            kinds.insert(0, Comparison.Kind.GOLD)
        for kind in kinds:
            comparison = _lock_candidate(campaign=campaign, annotator=annotator, kind=kind, now=now)
            if comparison:
                break
        else:
            return None
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


# ---------------------------------------------------------------- votes and preferences


def _canonical_choice(shown_choice: str, order: str) -> str:
    """The annotator picks by position shown (a = left); store the choice in A/B terms."""
    if order == Assignment.Order.BA and shown_choice in (Choice.A, Choice.B):
        return Choice.B if shown_choice == Choice.A else Choice.A
    return shown_choice


def _locked_own_assignment(*, annotator: AbstractBaseUser, assignment_id: int) -> Assignment:
    try:
        assignment = (
            Assignment.objects.select_for_update()
            .select_related("comparison")
            .get(pk=assignment_id)
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"Assignment {assignment_id} does not exist.") from None
    if assignment.annotator_id != annotator.pk:
        raise Forbidden("This assignment belongs to another annotator.")
    return assignment


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    created: bool
    preference: Preference | None = None


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
    limit = settings.PREFLOOP["MAX_RATIONALE_CHARS"]
    if len(rationale) > limit:
        raise InvalidInput(f"rationale is too long ({len(rationale)} characters, limit {limit}).", details={"field": "rationale"})
    if seconds_spent is not None and not (0 <= seconds_spent < 86400 and math.isfinite(seconds_spent)):
        raise InvalidInput("seconds_spent must be between 0 and 86400.", details={"field": "seconds_spent"})

    with transaction.atomic():
        assignment = _locked_own_assignment(annotator=annotator, assignment_id=assignment_id)
        # Lock the comparison too (assignment first, then comparison: the hand-out order), and
        # read the clock only now: a vote that waited for the locks is judged at commit time.
        comparison = Comparison.objects.select_for_update().get(pk=assignment.comparison_id)
        now = now or timezone.now()
        canonical = _canonical_choice(choice, assignment.order)
        existing = Vote.objects.filter(assignment=assignment).first()
        if existing:
            if existing.choice == canonical and existing.strength == strength:
                return VoteResult(vote=existing, created=False)
            raise AlreadyVoted("You already voted on this comparison with a different answer.", details={"vote_id": existing.pk})
        if comparison.status != Comparison.Status.OPEN:
            raise ComparisonClosed("This comparison is closed.")
        if assignment.state != Assignment.State.ACTIVE or assignment.expires_at <= now:
            raise LeaseExpired(
                "Your lease on this comparison has ended; it went back to the pool.",
                details={"state": assignment.state, "expired_at": assignment.expires_at.isoformat()},
            )
        vote = Vote.objects.create(
            comparison=comparison,
            annotator=annotator,
            assignment=assignment,
            choice=canonical,
            strength=strength,
            rationale=rationale.strip(),
            guideline_version=assignment.guideline_version,
            order_shown=assignment.order,
            seconds_spent=seconds_spent,
            is_gold_correct=(canonical == comparison.gold_answer) if comparison.kind == Comparison.Kind.GOLD else None,
        )
        assignment.state = Assignment.State.DONE
        assignment.save(update_fields=["state"])
        comparison.vote_count = F("vote_count") + 1
        comparison.save(update_fields=["vote_count"])
        comparison.refresh_from_db(fields=["vote_count"])
        preference = None
        if comparison.kind == Comparison.Kind.NORMAL and comparison.vote_count >= comparison.votes_required:
            preference = _comparison_complete(comparison=comparison, now=now)
    return VoteResult(vote=vote, created=True, preference=preference)


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


def _comparison_complete(*, comparison: Comparison, now: datetime) -> Preference | None:
    comparison.status = Comparison.Status.COMPLETE
    comparison.completed_at = now
    comparison.save(update_fields=["status", "completed_at"])
    votes = list(comparison.votes.values_list("choice", "annotator_id"))
    agg = votes_aggregate(c for c, _ in votes)
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


def assignment_skip(*, annotator: AbstractBaseUser, assignment_id: int, reason: str) -> Assignment:
    """Give a leased comparison back with a reason; it is not offered to this annotator again."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why you skip this comparison.", details={"field": "reason"})
    if len(reason) > 500:
        raise InvalidInput("The skip reason is too long (limit 500 characters).", details={"field": "reason"})
    with transaction.atomic():
        assignment = _locked_own_assignment(annotator=annotator, assignment_id=assignment_id)
        if assignment.state != Assignment.State.ACTIVE:
            raise Conflict(f"This assignment is already {assignment.state}.")
        assignment.state = Assignment.State.SKIPPED
        assignment.skip_reason = reason
        assignment.save(update_fields=["state", "skip_reason"])
    return assignment


# ---------------------------------------------------------------- imports


@dataclass
class ImportReport:
    """What an import did: the counts, and every bad line with its number and reason."""

    lines: int = 0
    created: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    written: bool = False

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "created": self.created,
            "duplicates": self.duplicates,
            "written": self.written,
            "errors": [{"line": n, "reason": r} for n, r in self.errors],
        }


def _json_lines(lines: Iterable[tuple[int, str]], report: ImportReport, parse):
    """Parse numbered JSONL lines with ``parse(row)``; collect (line, value) or record errors."""
    max_chars = settings.PREFLOOP["MAX_IMPORT_LINE_CHARS"]
    good = []
    for number, line in lines:
        if not line.strip():
            continue
        report.lines += 1
        try:
            if len(line) > max_chars:
                raise FormatError(f"line is too long ({len(line)} characters, limit {max_chars})")
            good.append((number, parse(parse_json_line(line))))
        except FormatError as exc:
            report.errors.append((number, str(exc)))
    return good


def _prompt_row(row: dict) -> tuple[list[dict], list[str], str]:
    max_text = settings.PREFLOOP["MAX_TEXT_CHARS"]
    messages = prompt_from_row({k: v for k, v in row.items() if k in ("prompt", "messages")}, max_chars=max_text)
    tags = row.get("tags", [])
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 50 for t in tags):
        raise FormatError("tags must be a list of short strings (or a comma-separated string)")
    split = row.get("split") or Prompt.Split.TRAIN
    if split not in Prompt.Split.values:
        raise FormatError(f"split must be one of {', '.join(Prompt.Split.values)}, got {split!r}")
    unknown = set(row) - {"prompt", "messages", "tags", "split", "id"}
    if unknown:
        raise FormatError(f"unknown column(s): {', '.join(sorted(unknown))}")
    return messages, tags, split


def _csv_rows(lines: list[tuple[int, str]]) -> list[tuple[int, dict]]:
    """Numbered rows of a CSV file given as numbered lines (quoted fields may span lines)."""
    reader = csv.DictReader(io.StringIO("\n".join(text for _, text in lines)))
    try:
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise InvalidInput("A CSV prompt file needs a 'prompt' column.")
        return [(reader.line_num, {k: v for k, v in row.items() if k and v not in (None, "")}) for row in reader]
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num}: unreadable CSV ({exc})") from None


def prompts_import(
    *, campaign: Campaign, lines: list[tuple[int, str]], fmt: str = "jsonl", strict: bool = False
) -> ImportReport:
    """Import prompts from numbered lines of JSONL (``prompt`` or ``messages``) or CSV (a
    ``prompt`` column). Bad lines are reported; with ``strict`` nothing is written if any is bad."""
    report = ImportReport()
    if fmt == "csv":
        good = []
        for number, row in _csv_rows(lines):
            report.lines += 1
            try:
                good.append((number, _prompt_row(row)))
            except FormatError as exc:
                report.errors.append((number, str(exc)))
    elif fmt == "jsonl":
        good = _json_lines(lines, report, _prompt_row)
    else:
        raise InvalidInput(f"Unknown prompt format {fmt!r}; use jsonl or csv.")
    if strict and report.errors:
        return report
    with transaction.atomic():
        for _, (messages, tags, split) in good:
            _, created = Prompt.objects.get_or_create(
                campaign=campaign,
                messages_hash=messages_hash(messages),
                defaults={"messages": messages, "tags": tags, "split": split},
            )
            report.created += created
            report.duplicates += not created
        report.written = True
    return report


def prompt_file_format(filename: str) -> str:
    return "csv" if filename.lower().endswith(".csv") else "jsonl"


def preferences_import(
    *, campaign: Campaign, lines: Iterable[tuple[int, str]], fmt: str, strict: bool = False
) -> ImportReport:
    """Import preference tuples (TRL or HH format). Bad lines are reported by number and reason;
    with ``strict`` nothing is written if any line is bad. Re-importing creates no duplicates."""
    if fmt not in PREFERENCE_READERS:
        raise InvalidInput(f"Unknown preference format {fmt!r}; use one of {', '.join(PREFERENCE_READERS)}.")
    reader = PREFERENCE_READERS[fmt]
    max_text = settings.PREFLOOP["MAX_TEXT_CHARS"]
    report = ImportReport()
    good: list[tuple[int, PreferenceRecord]] = _json_lines(lines, report, lambda row: reader(row, max_chars=max_text))
    if strict and report.errors:
        return report
    with transaction.atomic():
        # One importer per campaign at a time, so the bulk inserts below cannot race.
        Campaign.objects.select_for_update().get(pk=campaign.pk)
        prompt_ids = _bulk_prompts(campaign, [rec.prompt for _, rec in good])
        keys = []
        for _, rec in good:
            pid = prompt_ids[messages_hash(rec.prompt)]
            keys.append((pid, rec.chosen, rec.rejected))
        response_ids = _bulk_import_responses({(pid, t) for pid, c, r in keys for t in (c, r)})
        pairs = {}
        for pid, c, r in keys:
            pairs.setdefault((response_ids[(pid, text_hash(c))], response_ids[(pid, text_hash(r))]), pid)
        existing = set(
            Preference.objects.filter(comparison__isnull=True, chosen_id__in=[c for c, _ in pairs]).values_list(
                "chosen_id", "rejected_id"
            )
        )
        new = [
            Preference(campaign=campaign, prompt_id=pid, chosen_id=c, rejected_id=r, source=Preference.Source.IMPORT)
            for (c, r), pid in pairs.items()
            if (c, r) not in existing
        ]
        Preference.objects.bulk_create(new, batch_size=500)
        report.created = len(new)
        report.duplicates = len(good) - len(new)
        report.written = True
    return report


def _bulk_prompts(campaign: Campaign, prompts: list[list[dict]]) -> dict[str, int]:
    by_hash = {messages_hash(p): p for p in prompts}
    found = dict(
        Prompt.objects.filter(campaign=campaign, messages_hash__in=list(by_hash)).values_list("messages_hash", "pk")
    )
    missing = [Prompt(campaign=campaign, messages=m, messages_hash=h) for h, m in by_hash.items() if h not in found]
    for p in Prompt.objects.bulk_create(missing, batch_size=500):
        found[p.messages_hash] = p.pk
    return found


def _bulk_import_responses(items: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    wanted = {(pid, text_hash(t)): t for pid, t in items}
    found = {}
    prompt_ids = {pid for pid, _ in wanted}
    for pid, h, pk in Response.objects.filter(
        prompt_id__in=prompt_ids, model_version__isnull=True, text_hash__in={h for _, h in wanted}
    ).values_list("prompt_id", "text_hash", "pk"):
        found[(pid, h)] = pk
    missing = [
        Response(prompt_id=pid, text=t, text_hash=h, source=Response.Source.IMPORT)
        for (pid, h), t in wanted.items()
        if (pid, h) not in found
    ]
    for r in Response.objects.bulk_create(missing, batch_size=500):
        found[(r.prompt_id, r.text_hash)] = r.pk
    return found
