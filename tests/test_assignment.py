"""Fair assignment: leases, overlap cap, fewest-votes-first, never twice, expiry, gold mixing."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.errors import Conflict, NotFound
from annotation.models import Assignment, Comparison
from tests.factories import CampaignFactory, ComparisonFactory


def vote(user, campaign, choice="a"):
    a = services.assignment_next(campaign=campaign, annotator=user)
    assert a is not None
    return services.vote_submit(annotator=user, assignment_id=a.pk, choice=choice)


def test_lease_is_recorded_with_order_expiry_and_guideline(campaign, comparisons, annotator):
    a = services.assignment_next(campaign=campaign, annotator=annotator)
    assert a.state == Assignment.State.ACTIVE
    assert a.order in ("ab", "ba")
    assert timedelta(minutes=14) < a.expires_at - a.leased_at <= timedelta(minutes=15)
    assert a.guideline_version.version == 1


def test_same_lease_is_returned_until_voted(campaign, comparisons, annotator):
    first = services.assignment_next(campaign=campaign, annotator=annotator)
    assert services.assignment_next(campaign=campaign, annotator=annotator).pk == first.pk
    services.vote_submit(annotator=annotator, assignment_id=first.pk, choice="a")
    second = services.assignment_next(campaign=campaign, annotator=annotator)
    assert second.comparison_id != first.comparison_id


def test_the_lease_held_is_returned_also_when_nothing_else_is_open(db, annotator):
    """A reload on the campaign's last open comparison: the candidate's statement finds no row
    (the annotator's own lease excludes it), and the lease held is still answered, whole."""
    campaign = CampaignFactory(slug="last", votes_per_pair=1)
    only = ComparisonFactory(campaign=campaign)
    services.campaign_members_add(campaign=campaign, users=[annotator])
    first = services.assignment_next(campaign=campaign, annotator=annotator)
    again = services.assignment_next(campaign=campaign, annotator=annotator)
    assert (again.pk, again.comparison_id) == (first.pk, only.pk)
    assert again.comparison.response_a.text == only.response_a.text and again.guideline_version_id == first.guideline_version_id
    services.vote_submit(annotator=annotator, assignment_id=first.pk, choice="a")
    assert services.assignment_next(campaign=campaign, annotator=annotator) is None


def test_never_the_same_comparison_twice_and_stops_when_exhausted(campaign, comparisons, annotator):
    seen = set()
    for _ in comparisons:
        seen.add(vote(annotator, campaign).vote.comparison_id)
    assert len(seen) == len(comparisons)
    assert services.assignment_next(campaign=campaign, annotator=annotator) is None


def test_fewest_votes_first(campaign, annotators):
    c1, c2 = ComparisonFactory(campaign=campaign), ComparisonFactory(campaign=campaign)
    got = services.assignment_next(campaign=campaign, annotator=annotators[0])
    assert got.comparison_id == c1.pk  # both empty: lowest id
    services.vote_submit(annotator=annotators[0], assignment_id=got.pk, choice="a")
    # c1 has 1 vote, c2 has none: the next annotator gets c2.
    assert services.assignment_next(campaign=campaign, annotator=annotators[1]).comparison_id == c2.pk


def test_live_leases_count_against_the_overlap(db, annotators):
    campaign = CampaignFactory(votes_per_pair=2, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    a0 = services.assignment_next(campaign=campaign, annotator=annotators[0])
    a1 = services.assignment_next(campaign=campaign, annotator=annotators[1])
    assert a0.comparison_id == a1.comparison_id == c.pk
    # Two live leases fill both slots: nothing for a third annotator.
    assert services.assignment_next(campaign=campaign, annotator=annotators[2]) is None


def test_expired_lease_returns_to_the_pool_and_cannot_vote(db, annotators):
    campaign = CampaignFactory(votes_per_pair=1, members=annotators)
    ComparisonFactory(campaign=campaign)
    now = timezone.now()
    stale = services.assignment_next(campaign=campaign, annotator=annotators[0], now=now - timedelta(minutes=20))
    fresh = services.assignment_next(campaign=campaign, annotator=annotators[1], now=now)
    assert fresh is not None and fresh.comparison_id == stale.comparison_id
    # the hand-out found no free slot and ended the campaign's leases past their expiry (the sweep's work)
    stale.refresh_from_db()
    assert stale.state == Assignment.State.EXPIRED
    assert Comparison.objects.get(pk=fresh.comparison_id).leased == 1
    from annotation.errors import LeaseExpired

    with pytest.raises(LeaseExpired):
        services.vote_submit(annotator=annotators[0], assignment_id=stale.pk, choice="a")
    services.vote_submit(annotator=annotators[1], assignment_id=fresh.pk, choice="b")
    assert services.assignments_expire() == 0


def test_the_sweep_ends_expired_leases_and_gives_their_slots_back(db, annotators):
    campaign = CampaignFactory(votes_per_pair=2, members=annotators)
    c, other = ComparisonFactory(campaign=campaign), ComparisonFactory(campaign=campaign)
    now = timezone.now()
    old = [services.assignment_next(campaign=campaign, annotator=a, now=now - timedelta(minutes=20)) for a in annotators[:2]]
    live = services.assignment_next(campaign=campaign, annotator=annotators[2], now=now - timedelta(minutes=1))
    assert old[0].comparison_id == old[1].comparison_id == c.pk and live.comparison_id == other.pk  # c was full
    assert services.assignments_expire(now=now) == 2
    assert {a.state for a in Assignment.objects.filter(pk__in=[a.pk for a in old])} == {Assignment.State.EXPIRED}
    c.refresh_from_db()
    assert (c.leased, c.vote_count) == (0, 0)
    assert Comparison.objects.get(pk=live.comparison_id).leased == 1
    assert services.assignments_expire(now=now) == 0


def test_complete_comparisons_are_not_handed_out(db, annotators):
    campaign = CampaignFactory(votes_per_pair=2, members=annotators)
    c = ComparisonFactory(campaign=campaign)
    vote(annotators[0], campaign)
    vote(annotators[1], campaign)
    c.refresh_from_db()
    assert c.status == Comparison.Status.COMPLETE and c.vote_count == 2
    assert services.assignment_next(campaign=campaign, annotator=annotators[2]) is None


def test_skip_frees_the_slot_and_is_not_offered_again(db, annotators):
    campaign = CampaignFactory(votes_per_pair=1, members=annotators)
    ComparisonFactory(campaign=campaign)
    a = services.assignment_next(campaign=campaign, annotator=annotators[0])
    services.assignment_skip(annotator=annotators[0], assignment_id=a.pk, reason="not my language")
    assert services.assignment_next(campaign=campaign, annotator=annotators[0]) is None
    assert services.assignment_next(campaign=campaign, annotator=annotators[1]) is not None


def test_gold_mixed_at_the_campaign_rate(db, annotators):
    campaign = CampaignFactory(votes_per_pair=3, gold_rate=0.5, members=annotators)
    for _ in range(40):
        ComparisonFactory(campaign=campaign)
    for _ in range(40):
        ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
    kinds = [vote(annotators[0], campaign).vote.comparison.kind for _ in range(40)]
    # Binomial(40, 0.5): outside 8..32 has probability < 1e-4.
    assert 8 <= kinds.count("gold") <= 32
    none = CampaignFactory(gold_rate=0.0, members=annotators)
    ComparisonFactory(campaign=none, kind="gold", gold_answer="a")
    assert services.assignment_next(campaign=none, annotator=annotators[1]) is None


def test_gold_votes_are_scored_and_make_no_preference(db, annotator):
    campaign = CampaignFactory(votes_per_pair=1, gold_rate=1.0, members=[annotator])
    g = ComparisonFactory(campaign=campaign, kind="gold", gold_answer="b")
    ComparisonFactory(campaign=campaign)  # gold is handed out only beside normal work
    a = services.assignment_next(campaign=campaign, annotator=annotator)
    assert a.comparison_id == g.pk
    shown = "b" if a.order == "ab" else "a"  # the position where response B is shown
    result = services.vote_submit(annotator=annotator, assignment_id=a.pk, choice=shown)
    assert result.vote.choice == "b" and result.vote.is_gold_correct is True
    assert result.preference is None
    g.refresh_from_db()
    assert g.status == Comparison.Status.OPEN


def test_inactive_campaign_refuses_work(db, annotator):
    campaign = CampaignFactory(is_active=False, members=[annotator])
    with pytest.raises(Conflict):
        services.assignment_next(campaign=campaign, annotator=annotator)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_comparisons_leased_count_is_its_active_leases_whatever_happens(db, seed):
    """Leases, votes, skips, expiry (the sweep, and a hand-out that finds nothing else), members
    removed and added back, in a random order: every comparison's ``leased`` stays the number of
    its active leases, and votes + leases never pass ``votes_required``."""
    import random

    from django.db.models import Count, Q

    from tests.factories import UserFactory

    rng = random.Random(seed)
    people = [UserFactory(role="annotator") for _ in range(6)]
    campaign = CampaignFactory(votes_per_pair=2, members=people, gold_rate=0.2)
    for _ in range(8):
        ComparisonFactory(campaign=campaign)
    for _ in range(2):
        ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
    now = timezone.now()
    for _step in range(80):
        now += timedelta(minutes=rng.choice([0, 1, 8]))  # leases last 15 minutes: some expire on the way
        who = rng.choice(people)
        action = rng.choice(["next", "next", "vote", "vote", "skip", "sweep", "remove"])
        held = Assignment.objects.filter(annotator=who, campaign=campaign, state="active", expires_at__gt=now).first()
        if action == "next":
            try:
                services.assignment_next(campaign=campaign, annotator=who, now=now)
            except NotFound:  # a removed member: refused like an unknown campaign; back in for what follows
                services.campaign_members_add(campaign=campaign, users=[who])
        elif action == "vote" and held:
            services.vote_submit(annotator=who, assignment_id=held.pk, choice=rng.choice("ab"), now=now)
        elif action == "skip" and held:
            services.assignment_skip(annotator=who, assignment_id=held.pk, reason="unsure")
        elif action == "sweep":
            services.assignments_expire(now=now)
        elif action == "remove":
            services.campaign_members_remove(campaign=campaign, users=[who])
        for c in Comparison.objects.annotate(active=Count("assignments", filter=Q(assignments__state="active"))):
            assert c.leased == c.active, (action, c.pk)
            assert c.kind == "gold" or c.vote_count + c.leased <= c.votes_required
