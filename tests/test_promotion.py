"""Promotion and roll-back of a campaign's policy: recorded with who and why, undone newest
first, used by the next sampling; comparisons already sampled keep their provenance."""

import pytest

from annotation import services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, ModelVersion, PolicyPromotion, Response
from tests.factories import PromptFactory
from tests.test_api import assert_error


@pytest.fixture
def versions(db):
    base = services.model_version_register_base(spec="some/base")
    v1 = ModelVersion.objects.create(name="some/base+dpo-1", base="some/base", parent=base, artifact_path="/a/1")
    v2 = ModelVersion.objects.create(name="some/base+dpo-2", base="some/base", parent=v1, artifact_path="/a/2")
    return base, v1, v2


def test_promote_and_roll_back_newest_first(campaign, versions, admin_user):
    base, v1, v2 = versions
    campaign.policy = base
    campaign.save()
    p1 = services.campaign_policy_promote(campaign=campaign, version=v1, user=admin_user, reason="won 64%")
    assert campaign.policy == v1 and (p1.from_version, p1.to_version, p1.action, p1.by, p1.reason) == (base, v1, "promote", admin_user, "won 64%")
    services.campaign_policy_promote(campaign=campaign, version=v2, user=None)
    r1 = services.campaign_policy_rollback(campaign=campaign, user=admin_user, reason="too long")
    assert campaign.policy == v1 and (r1.from_version, r1.to_version, r1.action) == (v2, v1, "rollback")
    r2 = services.campaign_policy_rollback(campaign=campaign, user=admin_user)
    assert Campaign.objects.get(pk=campaign.pk).policy == base and (r2.from_version, r2.to_version) == (v1, base)
    with pytest.raises(Conflict, match="no promotion to roll back"):
        services.campaign_policy_rollback(campaign=campaign, user=admin_user)
    assert list(campaign.promotions.order_by("pk").values_list("action", flat=True)) == ["promote", "promote", "rollback", "rollback"]


def test_roll_back_to_no_policy_and_refusals(campaign, versions, admin_user):
    base, v1, _ = versions
    services.campaign_policy_promote(campaign=campaign, version=v1, user=admin_user)  # the campaign had no policy yet
    with pytest.raises(Conflict, match="already the active policy"):
        services.campaign_policy_promote(campaign=campaign, version=v1, user=admin_user)
    rm = ModelVersion.objects.create(name="rm", base="some/base", kind="reward")
    with pytest.raises(InvalidInput, match="'rm' is a reward model; only a policy can be promoted"):
        services.campaign_policy_promote(campaign=campaign, version=rm, user=admin_user)
    back = services.campaign_policy_rollback(campaign=campaign, user=admin_user)
    assert back.to_version is None and Campaign.objects.get(pk=campaign.pk).policy is None  # the default on the next refill
    assert PolicyPromotion.objects.count() == 2


def test_next_sampling_uses_the_promoted_version_and_old_pairs_keep_theirs(db, settings, tiny_policy, tiny_policy_other, admin_user):
    from workers import sampling

    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy}
    campaign = services.campaign_create(slug="loop", name="Loop", guideline="g",
                                        sampling_params={"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "top_p": 1.0})
    PromptFactory(campaign=campaign)
    assert sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=1, seed=0).policy == tiny_policy
    old = services.campaign_policy_ensure(campaign=campaign)
    new = services.model_version_register_base(spec=tiny_policy_other)
    services.campaign_policy_promote(campaign=campaign, version=new, user=admin_user)
    report = sampling.campaign_sample_pairs(campaign_id=campaign.pk, n=1, seed=1)
    assert report.created == 1 and report.policy == tiny_policy_other
    by_version = {v: Response.objects.filter(prompt__campaign=campaign, model_version=v).count() for v in (old, new)}
    assert by_version == {old: 2, new: 2}


def test_promote_and_rollback_api(api, campaign, versions, admin_user, annotator):
    base, v1, _ = versions
    c = api(admin_user)
    r = c.post("/api/campaigns/c1/promote/", {"version": v1.name, "reason": "better"}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["action"], body["from_version"], body["to_version"], body["by"], body["reason"]) == ("promote", None, v1.name, admin_user.username, "better")
    assert Campaign.objects.get(pk=campaign.pk).policy == v1
    assert_error(c.post("/api/campaigns/c1/promote/", {"version": v1.name}, format="json"), 409, "conflict")
    assert assert_error(c.post("/api/campaigns/c1/promote/", {"version": "nope"}, format="json"), 400, "invalid")["details"] == {"field": "version"}
    assert_error(c.post("/api/campaigns/nope/promote/", {"version": v1.name}, format="json"), 404, "not_found")
    assert_error(api(annotator).post("/api/campaigns/c1/promote/", {"version": base.name}, format="json"), 403, "permission_denied")
    assert_error(api(annotator).post("/api/campaigns/c1/rollback/"), 403, "permission_denied")
    r = c.post("/api/campaigns/c1/rollback/", {"reason": "worse in review"}, format="json")
    assert r.status_code == 200 and r.json()["to_version"] is None and r.json()["from_version"] == v1.name
    assert_error(c.post("/api/campaigns/c1/rollback/"), 409, "conflict")
