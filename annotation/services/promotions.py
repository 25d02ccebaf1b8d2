"""Which version a campaign samples from: promotions and roll-backs, each one recorded (who,
when, why). The sampler reads ``campaign.policy``, so its next refill uses the new version;
comparisons already sampled keep their responses' versions."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotation.errors import Conflict, InvalidInput
from annotation.models import AuditEvent, Campaign, ModelVersion, PolicyPromotion
from annotation.selectors import campaign_promotion_to_undo
from annotation.services.audit import audit_record


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
        audit_record(actor=user, action=AuditEvent.Action.POLICY_PROMOTE, campaign=locked, target=version.name,
                     details={"promotion": promotion.pk, "from_version": promotion.from_version_id, "reason": reason[:500]})
    campaign.refresh_from_db(fields=["policy"])
    return promotion


def campaign_policy_rollback(
    *, campaign: Campaign, user: AbstractBaseUser | None, reason: str = "", undoing: ModelVersion | None = None
) -> PolicyPromotion:
    """Back to the policy the latest promotion replaced (none: the default policy, registered
    again on the next refill), under the campaign's row lock. ``undoing``: roll back only when
    the promotion undone is the one to that version (a page shown before another promotion
    must not undo that other one); otherwise a Conflict."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        undone = campaign_promotion_to_undo(campaign=locked)
        if undone is None:
            raise Conflict(f"Campaign '{locked.slug}' has no promotion to roll back.")
        if undoing is not None and (undone.to_version_id != undoing.pk or locked.policy_id != undoing.pk):
            raise Conflict(f"'{undoing.name}' is no longer the promotion a roll-back undoes in '{locked.slug}' "
                           "(the active policy changed): nothing was rolled back.")
        promotion = PolicyPromotion.objects.create(
            campaign=locked, from_version_id=locked.policy_id, to_version_id=undone.from_version_id,
            action=PolicyPromotion.Action.ROLLBACK, by=_by(user), reason=reason,
        )
        locked.policy_id = undone.from_version_id
        locked.save(update_fields=["policy"])
        audit_record(actor=user, action=AuditEvent.Action.POLICY_ROLLBACK, campaign=locked,
                     target=str(promotion.to_version.name if promotion.to_version_id else "the default policy"),
                     details={"promotion": promotion.pk, "undone": undone.pk, "reason": reason[:500]})
    campaign.refresh_from_db(fields=["policy"])
    return promotion
