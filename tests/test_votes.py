"""Votes: validated, transactional, idempotent; preferences derived by majority."""

import pytest
from django.db import IntegrityError, transaction

from annotation import services
from annotation.errors import AlreadyVoted, ComparisonClosed, Forbidden, InvalidInput, NotFound
from annotation.models import Preference, Vote
from tests.factories import CampaignFactory, ComparisonFactory


def lease(user, campaign):
    return services.assignment_next(campaign=campaign, annotator=user)


def shown(assignment, canonical):
    """The shown label an annotator presses to pick the canonical response."""
    if canonical in ("a", "b") and assignment.order == "ba":
        return "b" if canonical == "a" else "a"
    return canonical


def test_vote_maps_shown_position_to_response_and_records_context(campaign, comparisons, annotator):
    a = lease(annotator, campaign)
    result = services.vote_submit(
        annotator=annotator, assignment_id=a.pk, choice="a", strength="much", rationale=" clearer ", seconds_spent=12.5
    )
    v = result.vote
    assert result.created
    assert v.choice == ("a" if a.order == "ab" else "b")
    assert (v.order_shown, v.strength, v.rationale, v.seconds_spent) == (a.order, "much", "clearer", 12.5)
    assert v.guideline_version.version == 1


@pytest.mark.parametrize("kind", ["normal", "gold"])
def test_the_stored_vote_lease_and_counts_are_what_the_vote_answered(db, annotators, kind):
    """The vote's row (one statement with the lease's and the comparison's on PostgreSQL) holds
    every column as answered; the lease is done; the count, status and completion time moved."""
    from django.forms.models import model_to_dict

    from annotation.models import Assignment, Comparison

    campaign = CampaignFactory(votes_per_pair=1, gold_rate=0.0 if kind == "normal" else 1.0)
    comparison = ComparisonFactory(campaign=campaign, kind=kind, gold_answer="b" if kind == "gold" else "")
    if kind == "gold":
        ComparisonFactory(campaign=campaign)  # gold is handed out beside normal work
    annotator = annotators[0]
    services.campaign_members_add(campaign=campaign, users=[annotator])
    a = lease(annotator, campaign)
    if kind == "gold":
        assert a.comparison_id == comparison.pk
    result = services.vote_submit(annotator=annotator, assignment_id=a.pk, choice=shown(a, "b"), seconds_spent=None)
    stored = Vote.objects.get(pk=result.vote.pk)
    assert model_to_dict(stored) == model_to_dict(result.vote) and stored.created_at == result.vote.created_at
    assert (stored.choice, stored.seconds_spent, stored.judge, stored.judge_details) == ("b", None, "", {})
    assert stored.is_gold_correct is (True if kind == "gold" else None)
    assert Assignment.objects.get(pk=a.pk).state == "done"
    after = Comparison.objects.get(pk=a.comparison_id)
    assert after.vote_count == 1
    if kind == "normal":
        assert after.status == "complete" and after.completed_at is not None
    else:  # gold items have no cap: they stay open
        assert after.status == "open" and after.completed_at is None


def test_double_submit_stores_one_vote(campaign, comparisons, annotator):
    a = lease(annotator, campaign)
    first = services.vote_submit(annotator=annotator, assignment_id=a.pk, choice="tie")
    again = services.vote_submit(annotator=annotator, assignment_id=a.pk, choice="tie")
    assert first.created and not again.created and again.vote.pk == first.vote.pk
    with pytest.raises(AlreadyVoted):
        services.vote_submit(annotator=annotator, assignment_id=a.pk, choice="both_bad")
    assert Vote.objects.count() == 1


def test_wrong_user_and_unknown_assignment_are_refused(campaign, comparisons, annotators):
    a = lease(annotators[0], campaign)
    with pytest.raises(Forbidden):
        services.vote_submit(annotator=annotators[1], assignment_id=a.pk, choice="a")
    with pytest.raises(NotFound):
        services.vote_submit(annotator=annotators[1], assignment_id=10**9, choice="a")
    assert Vote.objects.count() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"choice": "left"},
        {"choice": "a", "strength": "very"},
        {"choice": "tie", "strength": "much"},
        {"choice": "a", "rationale": "x" * 5001},
        {"choice": "a", "seconds_spent": -1.0},
        {"choice": "a", "seconds_spent": float("nan")},
    ],
)
def test_bad_votes_are_refused_and_change_nothing(campaign, comparisons, annotator, kwargs):
    a = lease(annotator, campaign)
    with pytest.raises(InvalidInput):
        services.vote_submit(annotator=annotator, assignment_id=a.pk, **kwargs)
    assert Vote.objects.count() == 0
    a.refresh_from_db()
    assert a.state == "active"


def test_vote_on_closed_comparison_is_refused(db, annotators):
    campaign = CampaignFactory(votes_per_pair=1, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    a = lease(annotators[0], campaign)
    c.status = "complete"
    c.save()
    with pytest.raises(ComparisonClosed):
        services.vote_submit(annotator=annotators[0], assignment_id=a.pk, choice="a")


def test_majority_makes_a_preference_with_agreement_and_margin(db, annotators):
    campaign = CampaignFactory(votes_per_pair=3, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    results = []
    for user, canonical in zip(annotators, ["b", "b", "tie"]):
        a = lease(user, campaign)
        results.append(services.vote_submit(annotator=user, assignment_id=a.pk, choice=shown(a, canonical)))
    pref = results[-1].preference
    assert pref is not None and results[0].preference is None
    assert (pref.chosen_id, pref.rejected_id) == (c.response_b_id, c.response_a_id)
    assert (pref.n_votes, pref.n_chosen, pref.n_rejected, pref.n_tie, pref.n_both_bad) == (3, 2, 0, 1, 0)
    assert pref.agreement == pytest.approx(2 / 3)
    assert pref.margin == pytest.approx(2 / 3)
    assert pref.source == "human" and pref.comparison_id == c.pk


def test_no_majority_no_preference(db, annotators):
    campaign = CampaignFactory(votes_per_pair=3, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    for user, canonical in zip(annotators, ["a", "b", "both_bad"]):
        a = lease(user, campaign)
        services.vote_submit(annotator=user, assignment_id=a.pk, choice=shown(a, canonical))
    c.refresh_from_db()
    assert c.status == "complete"
    assert not Preference.objects.exists()


@pytest.mark.parametrize(
    "choices,winner,agreement,margin",
    [
        (["a", "a", "a"], "a", 1.0, 1.0),
        (["a", "b", "a"], "a", 2 / 3, 1 / 3),
        (["tie", "tie", "b"], "b", 1 / 3, 1 / 3),
        (["a", "b"], None, None, None),
        (["both_bad", "tie"], None, None, None),
    ],
)
def test_votes_aggregate(choices, winner, agreement, margin):
    agg = services.votes_aggregate(choices)
    assert agg.winner == winner
    assert agg.agreement == (pytest.approx(agreement) if agreement is not None else None)
    assert agg.margin == (pytest.approx(margin) if margin is not None else None)


def test_database_refuses_a_second_vote_by_the_same_annotator(campaign, comparisons, annotator):
    a = lease(annotator, campaign)
    v = services.vote_submit(annotator=annotator, assignment_id=a.pk, choice="a").vote
    with pytest.raises(IntegrityError), transaction.atomic():
        Vote.objects.create(comparison=v.comparison, annotator=annotator, choice="b")


def test_database_refuses_more_votes_than_required(db):
    c = ComparisonFactory(campaign=CampaignFactory(votes_per_pair=1), vote_count=1)
    c.vote_count = 2
    with pytest.raises(IntegrityError), transaction.atomic():
        c.save()


def test_guideline_edit_creates_a_new_version_and_votes_keep_theirs(campaign, comparisons, annotators, admin_user):
    a = lease(annotators[0], campaign)
    v1 = services.vote_submit(annotator=annotators[0], assignment_id=a.pk, choice="a").vote
    g2 = services.guideline_publish(campaign=campaign, text="New rules.", user=admin_user)
    assert g2.version == 2
    assert services.guideline_publish(campaign=campaign, text="New rules.", user=admin_user).pk == g2.pk
    b = lease(annotators[1], campaign)
    v2 = services.vote_submit(annotator=annotators[1], assignment_id=b.pk, choice="a").vote
    v1.refresh_from_db()
    assert (v1.guideline_version.version, v2.guideline_version.version) == (1, 2)
    assert campaign.guidelines.get(version=1).text.startswith("Prefer")


def test_completing_a_comparison_whose_pair_was_also_imported(db, annotators):
    """An imported preference on the same two responses must not block the human one."""
    campaign = CampaignFactory(votes_per_pair=1, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    Preference.objects.create(campaign=campaign, prompt=c.prompt, chosen=c.response_a, rejected=c.response_b, source="import")
    a = lease(annotators[0], campaign)
    result = services.vote_submit(annotator=annotators[0], assignment_id=a.pk, choice=shown(a, "a"))
    assert result.preference is not None and result.preference.comparison_id == c.pk
    assert Preference.objects.filter(chosen=c.response_a, rejected=c.response_b).count() == 2
