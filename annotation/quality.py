"""Reads for label quality (selectors): the votes of a campaign as ``training.agreement`` rows
(people and AI judges alike), the comparisons a judge has yet to vote on, and the campaign's
quality report (agreement, per-voter quality, Dawid-Skene reliabilities, each judge's agreement
with people). Reviewers and admins read these; annotators never (they see their own votes)."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.functions import Length

from annotation.models import Campaign, Comparison, Judge, Vote
from training.agreement import VoteRow, campaign_agreement, dawid_skene, judge_agreement, voter_quality

JUDGE_PREFIX = "judge:"


def judge_pending_comparisons(*, judge: Judge, limit: int | None = None) -> QuerySet[Comparison]:
    """The campaign's comparisons (normal and gold) this judge has not voted on, oldest first."""
    voted = Vote.objects.filter(comparison=OuterRef("pk"), judge=judge.voter)
    qs = (Comparison.objects.filter(campaign_id=judge.campaign_id).filter(~Exists(voted))
          .select_related("prompt", "response_a", "response_b").order_by("pk"))
    return qs[:limit] if limit else qs


def campaign_vote_rows(*, campaign: Campaign) -> list[VoteRow]:
    """Every vote of the campaign as a ``VoteRow``: voter = the annotator's username or
    ``judge:<name>``; lengths in characters."""
    rows = (
        Vote.objects.filter(comparison__campaign=campaign)
        .annotate(length_a=Length("comparison__response_a__text"), length_b=Length("comparison__response_b__text"))
        .order_by("pk")
        .values_list("comparison_id", "annotator__username", "judge", "choice", "order_shown", "length_a", "length_b",
                     "seconds_spent", "is_gold_correct")
    )
    return [
        VoteRow(unit=cid, voter=username or judge, choice=choice, order_shown=order or "", length_a=la, length_b=lb,
                seconds=seconds, gold_correct=gold)
        for cid, username, judge, choice, order, la, lb, seconds, gold in rows.iterator(chunk_size=2000)
    ]


def campaign_quality(*, campaign: Campaign, min_common: int = 5) -> dict:
    """Agreement among people (and among everyone, judges included), each voter's quality,
    Dawid-Skene label reliabilities, and each judge's agreement with people, as plain data."""
    rows = campaign_vote_rows(campaign=campaign)
    people_rows = [r for r in rows if not r.voter.startswith(JUDGE_PREFIX)]
    people = {r.voter for r in people_rows}
    judges = sorted({r.voter for r in rows if r.voter.startswith(JUDGE_PREFIX)})
    ds = dawid_skene(rows)
    return {
        "campaign": campaign.slug,
        "votes": len(rows),
        "people": campaign_agreement(people_rows, min_common=min_common).as_dict(),
        "everyone": campaign_agreement(rows, min_common=min_common).as_dict() if judges else None,
        "voters": [q.as_dict() | {"is_judge": q.voter.startswith(JUDGE_PREFIX), "reliability": ds.reliability.get(q.voter)}
                   for q in voter_quality(rows)],
        "judges": [judge_agreement(rows, j, people=people).as_dict() | judge_order_consistency(campaign=campaign, voter=j)
                   for j in judges],
    }


def judge_order_consistency(*, campaign: Campaign, voter: str) -> dict:
    """How often a judge's two orders disagreed: ``order_inconsistency`` = share of its votes
    judged in both orders whose A-first and B-first verdicts differ (None when none was)."""
    both = inconsistent = 0
    for details in Vote.objects.filter(comparison__campaign=campaign, judge=voter).values_list("judge_details", flat=True):
        if len((details or {}).get("order_choices") or []) == 2:
            both += 1
            inconsistent += details.get("consistent") is False
    return {"both_orders_votes": both, "order_inconsistency": inconsistent / both if both else None}


def judge_gate(*, campaign: Campaign) -> dict:
    """The judge gate's state: the campaign's training judge, its agreement with people's
    majority (95% Wilson interval, comparisons counted), and whether its preferences may train
    now (``open``) with the reason. Closed when there is no training judge, too few comparisons
    are labelled by both, or the agreement is below the campaign's minimum."""
    judge = campaign.training_judge
    state = {"judge": judge.voter if judge else None, "min_agreement": campaign.judge_gate_min_agreement,
             "min_comparisons": campaign.judge_gate_min_comparisons, "agreement": None, "open": False}
    if judge is None:
        state["reason"] = "no training judge: AI judges' votes never train anything"
        return state
    rows = campaign_vote_rows(campaign=campaign)
    people = {r.voter for r in rows if not r.voter.startswith(JUDGE_PREFIX)}
    agreement = judge_agreement(rows, judge.voter, people=people)
    state["agreement"] = agreement.as_dict()
    if agreement.n < campaign.judge_gate_min_comparisons:
        state["reason"] = (f"closed: {agreement.n} comparisons labelled by both {judge.voter} and people, "
                           f"{campaign.judge_gate_min_comparisons} needed")
    elif agreement.rate < campaign.judge_gate_min_agreement:
        state["reason"] = f"closed: agreement {agreement.rate:.3f} < {campaign.judge_gate_min_agreement:.3f}"
    else:
        state["open"] = True
        state["reason"] = (f"open: agreement {agreement.rate:.3f} ≥ {campaign.judge_gate_min_agreement:.3f} "
                           f"on {agreement.n} comparisons")
    return state


def campaign_battles(*, campaign: Campaign) -> list:
    """Each person's vote on a comparison whose two responses come from different model
    versions, as a ``training.leaderboard.Battle`` (A won 1, B won 0, a tie or both bad 0.5, as
    Chatbot Arena counts "tie (bothbad)"); lengths in characters."""
    from django.db.models import F

    from training.leaderboard import Battle

    rows = (
        Vote.objects.filter(comparison__campaign=campaign, annotator__isnull=False,
                            comparison__response_a__model_version__isnull=False, comparison__response_b__model_version__isnull=False)
        .exclude(comparison__response_a__model_version=F("comparison__response_b__model_version"))
        .annotate(length_a=Length("comparison__response_a__text"), length_b=Length("comparison__response_b__text"))
        .values_list("comparison__response_a__model_version__name", "comparison__response_b__model_version__name", "choice",
                     "length_a", "length_b")
        .order_by("pk")
    )
    outcome = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
    return [Battle(a, b, outcome[choice], la, lb) for a, b, choice, la, lb in rows.iterator(chunk_size=2000)]


def campaign_leaderboard(*, campaign: Campaign, baseline: str | None = None, rounds: int = 200) -> dict:
    """The campaign's model leaderboard (``training.leaderboard.bradley_terry``) from its battles;
    ``baseline`` (default: the campaign's active policy when it fought) for the length-controlled
    win rates."""
    from training.leaderboard import bradley_terry

    battles = campaign_battles(campaign=campaign)
    models = {b.model_a for b in battles} | {b.model_b for b in battles}
    if baseline is None and campaign.policy is not None and campaign.policy.name in models:
        baseline = campaign.policy.name
    ratings = bradley_terry(battles, rounds=rounds, baseline=baseline if baseline in models else None)
    return {"campaign": campaign.slug, "battles": len(battles), "baseline": baseline if baseline in models else None,
            "ratings": [r.as_dict() for r in ratings]}
