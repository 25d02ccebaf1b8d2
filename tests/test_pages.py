"""Server-rendered pages and the forbidden paths around them; login throttling."""

import pytest
from django.test import Client

from tests.factories import UserFactory

# The campaign admin's inline formsets, empty: no retrain policy, no judges, no members.
NO_RETRAIN_POLICY = {"retrain_policy-TOTAL_FORMS": 0, "retrain_policy-INITIAL_FORMS": 0, "judges-TOTAL_FORMS": 0, "judges-INITIAL_FORMS": 0,
                     "memberships-TOTAL_FORMS": 0, "memberships-INITIAL_FORMS": 0}


def client_for(user):
    c = Client()
    c.force_login(user)
    return c


def test_anonymous_is_sent_to_login(campaign):
    for url in ("/", "/annotate/c1/"):
        r = Client().get(url)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_annotator_page_renders_guideline_and_assets_locally(campaign, comparisons, annotator):
    r = client_for(annotator).get("/annotate/c1/")
    html = r.content.decode()
    assert r.status_code == 200
    assert "<strong>more helpful</strong>" in html and "v1" in html
    assert "/static/annotation/annotate.js" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN


def test_home_lists_campaigns_with_progress(campaign, comparisons, annotator):
    html = client_for(annotator).get("/").content.decode()
    assert "/annotate/c1/" in html and "0 done · 5 open to you" in html


def test_pages_refuse_the_wrong_roles(campaign, annotator, reviewer):
    no_role = UserFactory()
    assert client_for(no_role).get("/annotate/c1/").status_code == 403
    assert client_for(reviewer).get("/annotate/c1/").status_code == 403
    # Annotators are not staff: the admin (votes, gold answers, users) is closed to them.
    for url in ("/admin/", "/admin/annotation/vote/", "/admin/annotation/comparison/"):
        r = client_for(annotator).get(url)
        assert r.status_code == 302 and "/admin/login/" in r["Location"]


def test_reviewer_reads_votes_in_admin_but_cannot_change_campaigns(campaign, reviewer):
    c = client_for(reviewer)
    assert c.get("/admin/annotation/vote/").status_code == 200
    assert c.get("/admin/annotation/campaign/add/").status_code == 403
    assert c.get("/admin/auth/user/").status_code == 403


def test_admin_edits_guideline_in_admin_creating_a_version(campaign, admin_user):
    c = client_for(admin_user)
    page = c.get(f"/admin/annotation/campaign/{campaign.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items() if k not in ("policy",)}
    data.update(
        {
            "slug": campaign.slug, "name": campaign.name, "guideline": "Version two.", "votes_per_pair": 3, "gold_rate": 0,
            "lease_minutes": 15, "buffer_size": 20, "is_active": "on", "sampling_params": "{}", "judge_settings": "{}",
            "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 1, **NO_RETRAIN_POLICY,
            "guidelines-0-id": campaign.guidelines.get().pk, "guidelines-0-campaign": campaign.pk,
        }
    )
    r = c.post(f"/admin/annotation/campaign/{campaign.pk}/change/", data)
    assert r.status_code == 302, r.context["adminform"].form.errors if r.context else r
    assert list(campaign.guidelines.order_by("version").values_list("version", "text")) == [
        (1, "Prefer the **more helpful** and harmless response."),
        (2, "Version two."),
    ]


def test_admin_refuses_bad_sampling_params_and_enqueues_sampling(campaign, admin_user, django_capture_on_commit_callbacks):
    c = client_for(admin_user)
    page = c.get(f"/admin/annotation/campaign/{campaign.pk}/change/")
    data = {k: ("" if v is None else v) for k, v in page.context["adminform"].form.initial.items() if k not in ("policy", "arena_policy")}
    data.update(
        {
            "slug": campaign.slug, "name": campaign.name, "guideline": "v1", "votes_per_pair": 3, "gold_rate": 0,
            "lease_minutes": 15, "buffer_size": 20, "is_active": "on", "sampling_params": '{"temperature": 0}',
            "judge_settings": "{}", "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 1, **NO_RETRAIN_POLICY,
            "guidelines-0-id": campaign.guidelines.get().pk, "guidelines-0-campaign": campaign.pk,
        }
    )
    r = c.post(f"/admin/annotation/campaign/{campaign.pk}/change/", data)
    assert r.status_code == 200 and "temperature must be &gt; 0" in r.content.decode()
    campaign.refresh_from_db()
    assert campaign.sampling_params == {}
    # The "sample now" action only enqueues (on commit); the worker side is tested in test_workers.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = c.post("/admin/annotation/campaign/", {"action": "sample_pairs_now", "_selected_action": [campaign.pk]})
    assert r.status_code == 302 and len(callbacks) == 1


@pytest.mark.django_db
def test_repeated_failed_logins_are_throttled():
    user = UserFactory(username="victim")
    c = Client(REMOTE_ADDR="10.0.0.9")
    for _ in range(4):
        r = c.post("/accounts/login/", {"username": "victim", "password": "wrong"})
        assert r.status_code == 200 and b"didn't match" in r.content
    # The fifth failure locks the account out for this address.
    assert c.post("/accounts/login/", {"username": "victim", "password": "wrong"}).status_code == 429
    # Now even the right password is refused for a while.
    r = c.post("/accounts/login/", {"username": "victim", "password": "pw-not-secret-123"})
    assert r.status_code == 429 and b"Too many failed logins" in r.content
    assert "_auth_user_id" not in c.session
    # Another address is not locked out.
    ok = Client(REMOTE_ADDR="10.0.0.10").post("/accounts/login/", {"username": user.username, "password": "pw-not-secret-123"})
    assert ok.status_code == 302
