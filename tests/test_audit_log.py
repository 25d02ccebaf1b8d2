"""The audit log: guideline edits, promotions and roll-backs, exports and membership changes
each leave one row (who, what, which campaign) written in the action's transaction; admins see
them in the Django admin, nobody else does."""

import pytest
from django.core.management import call_command
from django.test import Client

from annotation import roles, services
from annotation.errors import Conflict
from annotation.models import AuditEvent, ModelVersion
from tests.factories import UserFactory


def _events():
    return list(AuditEvent.objects.order_by("pk").values_list("action", "actor__username", "campaign__slug", "target"))


@pytest.fixture
def version(db):
    base = services.model_version_register_base(spec="some/base")
    return ModelVersion.objects.create(name="some/base+dpo-1", base="some/base", parent=base, artifact_path="/a/1")


def test_every_admin_action_is_logged_with_its_actor(api, campaign, version, admin_user, tmp_path):
    AuditEvent.objects.all().delete()  # the fixture campaign's first guideline
    c = api(admin_user)
    services.guideline_publish(campaign=campaign, text="Prefer the kinder answer.", user=admin_user)
    services.guideline_publish(campaign=campaign, text="Prefer the kinder answer.", user=admin_user)  # unchanged: no new version, no row
    assert c.post("/api/campaigns/c1/promote/", {"version": version.name, "reason": "won"}, format="json").status_code == 200
    assert c.post("/api/campaigns/c1/rollback/", {"reason": "worse"}, format="json").status_code == 200
    assert c.get("/api/campaigns/c1/preferences.jsonl?export_format=kto").status_code == 200
    call_command("export_preferences", campaign="c1", output=str(tmp_path / "out.jsonl"))
    newcomer = UserFactory(role=roles.ANNOTATOR, username="newcomer")
    services.campaign_members_add(campaign=campaign, users=[newcomer], added_by=admin_user)
    services.campaign_members_remove(campaign=campaign, users=[newcomer], removed_by=admin_user)
    me = admin_user.username
    assert _events() == [
        ("guideline_publish", me, "c1", "version 2"),
        ("policy_promote", me, "c1", version.name),
        ("policy_rollback", me, "c1", "the default policy"),
        ("export", me, "c1", "kto"),
        ("export", None, "c1", "trl"),
        ("members_add", me, "c1", "newcomer"),
        ("members_remove", me, "c1", "newcomer"),
    ]
    assert AuditEvent.objects.get(action="policy_promote").details["reason"] == "won"


def test_a_refused_action_leaves_no_row(campaign, version, admin_user):
    services.campaign_policy_promote(campaign=campaign, version=version, user=admin_user)
    n = AuditEvent.objects.count()
    with pytest.raises(Conflict):
        services.campaign_policy_promote(campaign=campaign, version=version, user=admin_user)  # already active
    assert AuditEvent.objects.count() == n


def test_admins_read_the_log_in_the_admin_and_nobody_changes_it(campaign, admin_user, reviewer, annotator):
    services.guideline_publish(campaign=campaign, text="v2", user=admin_user)
    event = AuditEvent.objects.latest("pk")
    admin_client = Client()
    admin_client.force_login(admin_user)
    listing = admin_client.get("/admin/annotation/auditevent/")
    assert listing.status_code == 200 and b"guideline published" in listing.content
    assert admin_client.get(f"/admin/annotation/auditevent/{event.pk}/change/").status_code == 200  # viewable
    assert admin_client.post(f"/admin/annotation/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    for user in (reviewer, annotator):
        other = Client()
        other.force_login(user)
        assert other.get("/admin/annotation/auditevent/").status_code in (302, 403)
