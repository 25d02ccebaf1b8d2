"""Campaign membership: which annotators work in which campaign (``CampaignMembership``).

Annotators see, lease, vote and skip only in the campaigns they are members of; reviewers and
admins see every campaign and need no membership (``annotation.access``)."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotation.access import sees_every_campaign
from annotation.models import Assignment, AuditEvent, Campaign, CampaignMembership
from annotation.services.assignment import leases_end
from annotation.services.audit import audit_record


def _distinct(users: Iterable[AbstractBaseUser]) -> list[AbstractBaseUser]:
    return list({user.pk: user for user in users}.values())


def campaign_members_add(*, campaign: Campaign, users: Iterable[AbstractBaseUser],
                         added_by: AbstractBaseUser | None = None) -> int:
    """Make ``users`` members of ``campaign``; those already members stay as they were (first
    ``added_by`` / ``added_at`` kept). Returns how many became members now."""
    users = _distinct(users)
    with transaction.atomic():
        present = set(CampaignMembership.objects.filter(campaign=campaign, user__in=users).values_list("user_id", flat=True))
        new = [CampaignMembership(campaign=campaign, user=user, added_by=added_by) for user in users if user.pk not in present]
        # ignore_conflicts: a concurrent add of the same user is not an error.
        CampaignMembership.objects.bulk_create(new, ignore_conflicts=True)
        if new:
            audit_record(actor=added_by, action=AuditEvent.Action.MEMBERS_ADD, campaign=campaign,
                         target=", ".join(m.user.get_username() for m in new), details={"users": [m.user.pk for m in new]})
    return len(new)


def campaign_members_remove(*, campaign: Campaign, users: Iterable[AbstractBaseUser],
                            removed_by: AbstractBaseUser | None = None) -> int:
    """End the membership of ``users`` in ``campaign``. Their live leases there end now, so the
    slots go back to the pool at once (a vote or skip on any lease of the campaign is refused
    from now on: ``assignment._locked_own_assignment``). Reviewers and admins keep their leases:
    they work in every campaign. Returns how many memberships ended."""
    users = _distinct(users)
    with transaction.atomic():
        removed, _ = CampaignMembership.objects.filter(campaign=campaign, user__in=users).delete()
        locked_out = [user.pk for user in users if not sees_every_campaign(user)]
        leases_end(leases=Assignment.objects.filter(campaign=campaign, annotator_id__in=locked_out), state=Assignment.State.EXPIRED)
        if removed:
            audit_record(actor=removed_by, action=AuditEvent.Action.MEMBERS_REMOVE, campaign=campaign,
                         target=", ".join(u.get_username() for u in users), details={"users": [u.pk for u in users]})
    return removed
