"""Which version a campaign samples from: promotions and roll-backs, each one recorded (who,
when, why). The sampler reads ``campaign.policy``, so its next refill uses the new version;
comparisons already sampled keep their responses' versions."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, ModelVersion, PolicyPromotion


def _by(user: AbstractBaseUser | None):
    return user if user is not None and user.is_authenticated else None


def campaign_policy_promote(
    *, campaign: Campaign, version: ModelVersion, user: AbstractBaseUser | None, reason: str = ""
) -> PolicyPromotion:
    """Make ``version`` the campaign's active policy, under the campaign's row lock."""
    if version.kind != ModelVersion.Kind.POLICY:
        raise InvalidInput(f"'{version.name}' is a {version.kind} model; only a policy can be promoted.", details={"field": "version"})
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.policy_id == version.pk:
            raise Conflict(f"'{version.name}' is already the active policy of '{locked.slug}'.")
        promotion = PolicyPromotion.objects.create(
            campaign=locked, from_version_id=locked.policy_id, to_version=version,
            action=PolicyPromotion.Action.PROMOTE, by=_by(user), reason=reason,
        )
        locked.policy = version
        locked.save(update_fields=["policy"])
    campaign.refresh_from_db(fields=["policy"])
    return promotion


def _promotion_to_undo(campaign: Campaign) -> PolicyPromotion | None:
    """The latest promotion not rolled back yet: roll-backs undo promotions newest first, so
    promote v1, promote v2, roll back (to v1), roll back (to the policy before v1)."""
    pending = 0
    for record in campaign.promotions.order_by("-created_at", "-pk"):
        if record.action == PolicyPromotion.Action.ROLLBACK:
            pending += 1
        elif pending:
            pending -= 1
        else:
            return record
    return None


def campaign_policy_rollback(*, campaign: Campaign, user: AbstractBaseUser | None, reason: str = "") -> PolicyPromotion:
    """Back to the policy the latest promotion replaced (none: the default policy, registered
    again on the next refill), under the campaign's row lock."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        undone = _promotion_to_undo(locked)
        if undone is None:
            raise Conflict(f"Campaign '{locked.slug}' has no promotion to roll back.")
        promotion = PolicyPromotion.objects.create(
            campaign=locked, from_version_id=locked.policy_id, to_version_id=undone.from_version_id,
            action=PolicyPromotion.Action.ROLLBACK, by=_by(user), reason=reason,
        )
        locked.policy_id = undone.from_version_id
        locked.save(update_fields=["policy"])
    campaign.refresh_from_db(fields=["policy"])
    return promotion
