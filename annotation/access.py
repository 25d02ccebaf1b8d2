"""Who sees which campaign, and what is open to an annotator in it.

Admins see every campaign, reviewers every active one; annotators the active campaigns they are
members of (``CampaignMembership``), and they lease, vote and skip only there. Re-exported by
``annotation.selectors``, the one read API of the app."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.errors import InvalidInput
from annotation.models import Assignment, Campaign, CampaignMembership, Comparison


def campaign_named_for(*, slug: str, user: AbstractBaseUser) -> Campaign:
    """A campaign ``user`` can see, named in a request body: an unknown one is bad input."""
    campaign = campaigns_for_user(user=user).filter(slug=slug).first()
    if campaign is None:
        raise InvalidInput(f"No campaign '{slug}'.", details={"field": "campaign"})
    return campaign


def sees_every_campaign(user: AbstractBaseUser) -> bool:
    """Reviewers and admins see (and may annotate in) every campaign; annotators only their own."""
    return user.has_perm("annotation.change_campaign") or user.has_perm("annotation.review_votes")


def campaigns_for_user(*, user: AbstractBaseUser) -> QuerySet[Campaign]:
    """Admins: every campaign; reviewers: the active ones; annotators: the active ones they are members of."""
    qs = Campaign.objects.order_by("slug")
    if user.has_perm("annotation.change_campaign"):
        return qs
    qs = qs.filter(is_active=True)
    if not user.has_perm("annotation.review_votes"):
        qs = qs.filter(Exists(CampaignMembership.objects.filter(campaign=OuterRef("pk"), user_id=user.pk)))
    return qs


def campaign_open_to(*, campaign: Campaign, user: AbstractBaseUser) -> bool:
    """May ``user`` lease, vote and skip in ``campaign``: a member, or a reviewer or admin."""
    return sees_every_campaign(user) or CampaignMembership.objects.filter(campaign=campaign, user_id=user.pk).exists()


def campaign_members(*, campaign: Campaign) -> QuerySet:
    """The campaign's members (users), by username."""
    return get_user_model().objects.filter(campaign_memberships__campaign=campaign).order_by("username")


def comparisons_open_to(
    *, campaign: Campaign, annotator: AbstractBaseUser, kind: str = Comparison.Kind.NORMAL, now=None
) -> QuerySet[Comparison]:
    """Open comparisons this annotator has never been given that still have a free slot
    (votes + live leases below ``votes_required``; gold items have no cap)."""
    now = now or timezone.now()
    qs = Comparison.objects.filter(campaign=campaign, status=Comparison.Status.OPEN, kind=kind).exclude(
        Exists(Assignment.objects.filter(comparison=OuterRef("pk"), annotator=annotator))
    )
    if kind == Comparison.Kind.NORMAL:
        live = (
            Assignment.objects.filter(comparison=OuterRef("pk"), state=Assignment.State.ACTIVE, expires_at__gt=now)
            .order_by()
            .values("comparison")
            .annotate(n=Count("pk"))
            .values("n")
        )
        qs = qs.alias(live=Coalesce(Subquery(live), 0)).filter(vote_count__lt=F("votes_required") - F("live"))
    return qs


def annotator_progress(*, campaign: Campaign, annotator: AbstractBaseUser) -> dict:
    """Done / skipped by this annotator, and how many comparisons are still open to them.

    ``remaining`` counts gold items with normal ones (when the campaign hands out gold at all),
    and is 0 when no normal item is open to them (``assignment_next`` hands out gold only beside
    normal work): every lease, whatever its kind, lowers it by one, except the last normal one,
    which takes it to 0. Counting normal items only told gold apart: the counter stood still after
    a gold lease and dropped after a normal one."""
    counts = Assignment.objects.filter(annotator=annotator, comparison__campaign=campaign).aggregate(
        done=Count("pk", filter=Q(state=Assignment.State.DONE)),
        skipped=Count("pk", filter=Q(state=Assignment.State.SKIPPED)),
    )
    remaining = comparisons_open_to(campaign=campaign, annotator=annotator).count()
    if remaining and campaign.gold_rate > 0:
        remaining += comparisons_open_to(campaign=campaign, annotator=annotator, kind=Comparison.Kind.GOLD).count()
    return {"done": counts["done"], "skipped": counts["skipped"], "remaining": remaining}
