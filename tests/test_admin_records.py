"""The Django admin keeps records read-only: votes, preferences, assignments and comparisons are
never added, changed or deleted there, neither directly, nor in bulk, nor in cascade from a
campaign, a prompt or a user (deleting a vote once left its comparison counting it)."""

import pytest

from annotation import services
from annotation.models import Assignment, Campaign, Comparison, Preference, Prompt, Vote
from tests.factories import ComparisonFactory
from tests.test_pages import client_for


@pytest.fixture
def records(campaign, annotators):
    """A comparison completed by three votes (one preference), and a skipped lease on another."""
    ComparisonFactory(campaign=campaign)
    for user in annotators[:3]:
        lease = services.assignment_next(campaign=campaign, annotator=user)
        services.vote_submit(annotator=user, assignment_id=lease.pk, choice="a" if lease.order == "ab" else "b")
    ComparisonFactory(campaign=campaign)
    skipped = services.assignment_next(campaign=campaign, annotator=annotators[3])
    services.assignment_skip(annotator=annotators[3], assignment_id=skipped.pk, reason="unsure")
    return {"vote": Vote.objects.first(), "preference": Preference.objects.get(), "assignment": skipped,
            "comparison": Comparison.objects.get(vote_count=3)}


def counts():
    return {
        "votes": Vote.objects.count(), "preferences": Preference.objects.count(), "assignments": Assignment.objects.count(),
        "comparisons": Comparison.objects.count(), "prompts": Prompt.objects.count(), "campaigns": Campaign.objects.count(),
        "vote_count": sorted(Comparison.objects.values_list("vote_count", flat=True)),
    }


@pytest.mark.parametrize("name", ["vote", "preference", "assignment", "comparison"])
def test_records_are_viewable_but_not_added_changed_or_deleted(records, admin_user, name):
    c = client_for(admin_user)
    obj = records[name]
    base = f"/admin/annotation/{name}/"
    before = counts()
    page = c.get(f"{base}{obj.pk}/change/")
    assert page.status_code == 200 and "Close" in page.content.decode()  # the read-only view
    listing = c.get(base)
    assert listing.status_code == 200 and 'value="delete_selected"' not in listing.content.decode()
    assert c.get(f"{base}add/").status_code == 403
    assert c.post(f"{base}add/", {}).status_code == 403
    assert c.post(f"{base}{obj.pk}/change/", {}).status_code == 403
    assert c.get(f"{base}{obj.pk}/delete/").status_code == 403
    assert c.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    # The bulk action is not there to pick: the admin answers "no action selected" and deletes nothing.
    r = c.post(base, {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes", "index": 0})
    assert r.status_code in (200, 302)
    assert counts() == before


def test_no_cascade_from_a_campaign_prompt_or_user_deletes_votes(records, admin_user, campaign, annotators):
    c = client_for(admin_user)
    before = counts()
    prompt = records["comparison"].prompt
    for url in (f"/admin/annotation/campaign/{campaign.pk}/delete/", f"/admin/annotation/prompt/{prompt.pk}/delete/",
                f"/admin/auth/user/{annotators[0].pk}/delete/",  # a voter
                f"/admin/auth/user/{annotators[3].pk}/delete/"):  # a skipped lease, no vote
        # 403: the cascade reaches records whose admin refuses deletion; 200: the page listing
        # what protects the object (a prompt's responses are PROTECTed by its comparisons).
        assert c.post(url, {"post": "yes"}).status_code in (200, 403), url
        assert counts() == before, url
    assert 'value="delete_selected"' not in c.get("/admin/annotation/campaign/").content.decode()  # deactivate instead
    # Users may be deleted in bulk, but not one whose cascade reaches a lease.
    r = c.post("/admin/auth/user/", {"action": "delete_selected", "_selected_action": [annotators[3].pk], "post": "yes", "index": 0})
    assert r.status_code == 403
    assert counts() == before


def test_a_prompt_nothing_was_made_from_may_still_be_deleted(campaign, admin_user):
    prompt = Prompt.objects.create(campaign=campaign, messages=[{"role": "user", "content": "typo"}], messages_hash="x")
    r = client_for(admin_user).post(f"/admin/annotation/prompt/{prompt.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302 and not Prompt.objects.filter(pk=prompt.pk).exists()
