"""Campaign membership: annotators see, lease, vote and skip only in their campaigns; reviewers and
admins see every campaign; admins add and remove members (service, command, Django admin)."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from annotation import roles, selectors, services
from annotation.errors import Forbidden, NotFound
from annotation.models import Assignment, CampaignMembership, Vote
from tests.factories import CampaignFactory, ComparisonFactory, UserFactory
from tests.test_api import assert_error
from tests.test_pages import NO_RETRAIN_POLICY


@pytest.fixture
def other(db):
    """A campaign the ``annotators`` fixture is not a member of, with work in it."""
    campaign = CampaignFactory(slug="other", name="Other")
    ComparisonFactory(campaign=campaign)
    return campaign


def logged_in(user):
    c = Client()
    c.force_login(user)
    return c


def test_annotators_see_and_work_only_in_their_campaigns(api, campaign, comparisons, other, annotator):
    c = api(annotator)
    assert [row["slug"] for row in c.get("/api/campaigns/").json()] == ["c1"]
    assert c.get("/api/campaigns/c1/").status_code == 200
    # Another campaign does not exist for them: the same 404 as an unknown slug (nothing to probe).
    for path in ("/api/campaigns/other/", "/api/campaigns/nope/"):
        assert_error(c.get(path), 404, "not_found")
    assert c.post("/api/campaigns/other/next/").json() == c.post("/api/campaigns/nope/next/").json()
    assert_error(c.post("/api/campaigns/other/next/"), 404, "not_found")
    assert_error(c.get("/api/votes/?campaign=other"), 404, "not_found")
    assert c.post("/api/campaigns/c1/next/").json()["assignment"] is not None
    assert not Assignment.objects.filter(comparison__campaign=other).exists()
    # The pages too: the home page lists only theirs, the annotate page of another is a 404.
    page = logged_in(annotator)
    html = page.get("/").content.decode()
    assert "/annotate/c1/" in html and "/annotate/other/" not in html
    assert page.get("/annotate/other/").status_code == 404
    assert page.get("/annotate/c1/").status_code == 200
    # The service refuses as well (callers other than the API: simulations, the shell).
    with pytest.raises(NotFound):
        services.assignment_next(campaign=other, annotator=annotator)


def test_reviewers_and_admins_see_every_campaign_without_membership(api, campaign, other, reviewer, admin_user):
    for user in (reviewer, admin_user):
        assert [row["slug"] for row in api(user).get("/api/campaigns/").json()] == ["c1", "other"]
        assert api(user).get("/api/campaigns/other/").status_code == 200
    # Admins hold every permission, annotate included: they may work in any campaign.
    assert api(admin_user).post("/api/campaigns/other/next/").json()["assignment"] is not None
    assert selectors.campaign_open_to(campaign=other, user=reviewer)


def test_a_removed_member_cannot_vote_or_skip_and_the_slot_returns(api, db, annotators):
    campaign = CampaignFactory(slug="solo", votes_per_pair=1, members=annotators[:2])
    ComparisonFactory(campaign=campaign)
    first, second = annotators[:2]
    lease = api(first).post("/api/campaigns/solo/next/").json()["assignment"]
    assert services.campaign_members_remove(campaign=campaign, users=[first]) == 1
    for path, body in ((f"/api/assignments/{lease['id']}/vote/", {"choice": "a"}),
                       (f"/api/assignments/{lease['id']}/skip/", {"reason": "unclear"})):
        r = api(first).post(path, body, format="json")
        assert_error(r, 403, "forbidden")
        assert "no longer a member of campaign 'solo'" in r.json()["error"]["message"]
    with pytest.raises(Forbidden):
        services.vote_submit(annotator=first, assignment_id=lease["id"], choice="a")
    assert not Vote.objects.exists()
    assert Assignment.objects.get(pk=lease["id"]).state == Assignment.State.EXPIRED
    # The lease ended with the membership: the only slot goes to a member at once.
    taken = api(second).post("/api/campaigns/solo/next/").json()["assignment"]
    assert taken is not None
    assert api(second).post(f"/api/assignments/{taken['id']}/vote/", {"choice": "b"}, format="json").status_code == 201
    # Added back: the campaign is theirs again (the comparison they had stays off their list).
    services.campaign_members_add(campaign=campaign, users=[first])
    assert api(first).get("/api/campaigns/solo/").status_code == 200


def _meanwhile(monkeypatch, action, wait: float) -> dict:
    """Run ``action()`` in another thread (its own connection) once ``next`` has locked the
    membership row and is about to lock a candidate, giving it ``wait`` seconds before ``next``
    goes on; returns {"thread", "result"}."""
    import threading

    from django.db import connection

    from annotation.services import assignment

    real, state = assignment._lock_candidate, {}

    def run():
        try:
            state["result"] = action()
        finally:
            connection.close()

    def lock_candidate(**kwargs):
        if "thread" not in state:
            state["thread"] = threading.Thread(target=run)
            state["thread"].start()
            state["thread"].join(timeout=wait)  # it finishes, or waits on our lock
        return real(**kwargs)

    monkeypatch.setattr(assignment, "_lock_candidate", lock_candidate)
    return state


@pytest.mark.django_db(transaction=True)
def test_a_member_removed_while_their_next_runs_keeps_no_live_lease(monkeypatch):
    """An admin removes the annotator after ``next`` checked the membership but before it leased:
    the removal waits for the lease's transaction (the membership row is locked in it) and then
    ends that lease with the others; it never leaves a live lease to someone no longer a member."""
    campaign = CampaignFactory(slug="race", votes_per_pair=1)
    ComparisonFactory(campaign=campaign)
    member = UserFactory(role=roles.ANNOTATOR)
    services.campaign_members_add(campaign=campaign, users=[member])
    removal = _meanwhile(monkeypatch, lambda: services.campaign_members_remove(campaign=campaign, users=[member]), wait=1)
    try:
        services.assignment_next(campaign=campaign, annotator=member)
    except NotFound:
        pass  # the removal went first: nothing handed out
    removal["thread"].join(timeout=30)
    assert removal["result"] == 1
    assert not Assignment.objects.filter(annotator=member, state=Assignment.State.ACTIVE).exists()


def test_membership_services_are_idempotent(db, annotators, admin_user):
    campaign = CampaignFactory()
    assert services.campaign_members_add(campaign=campaign, users=annotators[:2], added_by=admin_user) == 2
    assert services.campaign_members_add(campaign=campaign, users=annotators[:3] + annotators[:1]) == 1
    assert list(selectors.campaign_members(campaign=campaign)) == sorted(annotators[:3], key=lambda u: u.username)
    assert CampaignMembership.objects.get(campaign=campaign, user=annotators[0]).added_by == admin_user  # first add kept
    assert services.campaign_members_remove(campaign=campaign, users=[annotators[0], annotators[3]]) == 1
    assert selectors.campaign_members(campaign=campaign).count() == 2


def test_campaign_members_command(db, capsys):
    campaign = CampaignFactory(slug="cmd")
    ann = [UserFactory(username=name, role=roles.ANNOTATOR) for name in ("ann", "ben")]
    call_command("campaign_members", "add", "cmd", "ann", "ben")
    assert "2 user(s) added to 'cmd'" in capsys.readouterr().out
    call_command("campaign_members", "list", "cmd")
    assert capsys.readouterr().out.split() == ["ann", "ben"]
    with pytest.raises(CommandError, match="No user.*nobody; nothing changed"):
        call_command("campaign_members", "remove", "cmd", "ann", "nobody")
    with pytest.raises(CommandError, match="No campaign 'nope'"):
        call_command("campaign_members", "add", "nope", "ann")
    call_command("campaign_members", "remove", "cmd", "ann")
    assert list(selectors.campaign_members(campaign=campaign)) == [ann[1]]


def _campaign_form(client, campaign) -> dict:
    page = client.get(f"/admin/annotation/campaign/{campaign.pk}/change/")
    assert page.status_code == 200 and "memberships-TOTAL_FORMS" in page.content.decode()
    data = {k: ("" if v is None else v) for k, v in page.context["adminform"].form.initial.items() if k not in ("policy", "arena_policy")}
    data.update({
        "slug": campaign.slug, "name": campaign.name, "guideline": campaign.guidelines.get().text, "votes_per_pair": 3,
        "gold_rate": 0, "lease_minutes": 15, "buffer_size": 20, "is_active": "on", "sampling_params": "{}",
        "judge_settings": "{}", "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 1,
        "guidelines-0-id": campaign.guidelines.get().pk, "guidelines-0-campaign": campaign.pk, **NO_RETRAIN_POLICY,
    })
    return data


def test_admin_adds_and_removes_members_on_the_campaign_page(campaign, other, annotators, admin_user):
    c = logged_in(admin_user)
    data = _campaign_form(c, other) | {"memberships-TOTAL_FORMS": 1, "memberships-0-user": annotators[0].pk,
                                        "memberships-0-campaign": other.pk}
    r = c.post(f"/admin/annotation/campaign/{other.pk}/change/", data)
    assert r.status_code == 302, r.context["adminform"].form.errors if r.context else r
    membership = CampaignMembership.objects.get(campaign=other)
    assert (membership.user, membership.added_by) == (annotators[0], admin_user)
    # The existing row is shown read-only (never re-pointed to another user); its delete box removes it.
    data = _campaign_form(c, other) | {"memberships-TOTAL_FORMS": 1, "memberships-INITIAL_FORMS": 1,
                                        "memberships-0-id": membership.pk, "memberships-0-campaign": other.pk,
                                        "memberships-0-DELETE": "on"}
    r = c.post(f"/admin/annotation/campaign/{other.pk}/change/", data)
    assert r.status_code == 302
    assert not CampaignMembership.objects.filter(campaign=other).exists()


def test_admin_bulk_action_adds_selected_users_to_a_campaign(campaign, other, annotators, admin_user, reviewer):
    c = logged_in(admin_user)
    page = c.get("/admin/auth/user/").content.decode()
    assert 'value="add_to_campaign"' in page and 'name="campaign"' in page
    chosen = [annotators[1].pk, annotators[2].pk]
    r = c.post("/admin/auth/user/", {"action": "add_to_campaign", "_selected_action": chosen, "campaign": other.pk, "index": 0})
    assert r.status_code == 302
    assert sorted(selectors.campaign_members(campaign=other).values_list("pk", flat=True)) == chosen
    assert CampaignMembership.objects.get(campaign=other, user=annotators[1]).added_by == admin_user
    # No campaign chosen: an error message, nothing changes.
    r = c.post("/admin/auth/user/", {"action": "add_to_campaign", "_selected_action": [annotators[3].pk], "index": 0}, follow=True)
    assert "Choose a campaign" in r.content.decode()
    assert selectors.campaign_members(campaign=other).count() == 2
    r = c.post("/admin/auth/user/", {"action": "remove_from_campaign", "_selected_action": [annotators[1].pk],
                                     "campaign": other.pk, "index": 0})
    assert r.status_code == 302 and list(selectors.campaign_members(campaign=other)) == [annotators[2]]


def test_demo_annotators_are_members_of_the_demo_campaign(db):
    from annotation.demo import DEMO_SLUG, demo_seed

    result = demo_seed()
    assert [u.username for u in selectors.campaign_members(campaign=result.campaign)] == ["alice", "bob", "carol"]
    assert demo_seed().campaign.memberships.count() == 3  # idempotent
    assert result.campaign.slug == DEMO_SLUG


@pytest.mark.django_db(transaction=True)
def test_migration_makes_past_workers_members():
    from tests.test_migrations import migrated_back_to

    with migrated_back_to("0009_rl_kinds") as apps:
        get = lambda name: apps.get_model("annotation", name)  # noqa: E731
        user = apps.get_model("auth", "User").objects.create(username="worker")
        campaign = get("Campaign").objects.create(slug="old", name="old")
        prompt = get("Prompt").objects.create(campaign=campaign, messages=[], messages_hash="h")
        a, b = (get("Response").objects.create(prompt=prompt, text=t, text_hash=t) for t in "ab")
        comparison = get("Comparison").objects.create(campaign=campaign, prompt=prompt, response_a=a, response_b=b,
                                                      votes_required=3)
        now = timezone.now()
        get("Assignment").objects.create(comparison=comparison, annotator=user, order="ab", leased_at=now,
                                         expires_at=now + timedelta(minutes=1))
    assert list(CampaignMembership.objects.values_list("campaign__slug", "user__username")) == [("old", "worker")]


@pytest.mark.django_db(transaction=True)
def test_two_tabs_asking_at_once_get_the_same_lease(monkeypatch):
    """A second tab's ``next`` waits on the first one's membership lock; once the first commits its
    lease, the second must answer that lease, not lease a second comparison (its locking
    statement's snapshot predates the wait, so the held lease is read in a statement after it)."""
    campaign = CampaignFactory(slug="tabs", votes_per_pair=1)
    ComparisonFactory(campaign=campaign)
    ComparisonFactory(campaign=campaign)
    member = UserFactory(role=roles.ANNOTATOR)
    services.campaign_members_add(campaign=campaign, users=[member])
    second = _meanwhile(monkeypatch, lambda: services.assignment_next(campaign=campaign, annotator=member), wait=0.5)
    first = services.assignment_next(campaign=campaign, annotator=member)
    second["thread"].join(timeout=30)
    assert first is not None and second["result"] is not None
    assert second["result"].pk == first.pk
    assert Assignment.objects.filter(annotator=member, state=Assignment.State.ACTIVE).count() == 1
