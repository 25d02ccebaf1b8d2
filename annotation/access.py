"""Who sees which campaign, and what is open to an annotator in it.

Admins see every campaign, reviewers every active one; annotators the active campaigns they are
members of (``CampaignMembership``), and they lease, vote and skip only there. Re-exported by
``annotation.selectors``, the one read API of the app."""

from __future__ import annotations

from django.contrib.auth import backends, get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.db.models import Exists, F, Func, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from annotation.errors import InvalidInput
from annotation.limits import PROGRESS_COUNT_CAP
from annotation.models import Assignment, Campaign, CampaignMembership, Comparison
from annotation.prepared import Prepared


class ModelBackend(backends.ModelBackend):
    """Django's ``ModelBackend`` (AUTHENTICATION_BACKENDS), reading a user's permissions, their
    own and their groups', in one query instead of two, compiled once: every API call checks one."""

    def get_all_permissions(self, user_obj, obj=None):
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            rows = _PERMS_ALL.rows() if user_obj.is_superuser else _PERMS.rows(user=user_obj.pk)
            user_obj._perm_cache = {f"{ct}.{name}" for ct, name in rows}
        return user_obj._perm_cache


def permissions_of(user) -> QuerySet[Permission]:
    """``user``'s own permissions and their groups' (a user, an id, or an expression: in a
    subquery, ``OuterRef(OuterRef(...))``, the user column two queries out)."""
    return Permission.objects.filter(Q(pk__in=Permission.objects.filter(user=user).values("pk"))
                                     | Q(pk__in=Permission.objects.filter(group__user=user).values("pk")))


def _perms_query(user=None):
    """Permissions (app label, codename): all of them, or ``user``'s (``permissions_of``)."""
    perms = Permission.objects.all() if user is None else permissions_of(user)
    return perms.values_list("content_type__app_label", "codename").order_by()


_PERMS, _PERMS_ALL = Prepared(_perms_query, user=int), Prepared(_perms_query)


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


def comparisons_open_to(*, campaign: Campaign, annotator: AbstractBaseUser, kind: str = Comparison.Kind.NORMAL) -> QuerySet[Comparison]:
    """Open comparisons this annotator has never been given that still have a free slot
    (votes + leases below ``votes_required``, both counts on the row: ``Comparison.leased``;
    gold items have no cap).

    "Never given" is an uncorrelated NOT IN subquery (the annotator's leases), which PostgreSQL
    hashes once per statement: a statement over a campaign's comparisons costs about one hash
    probe per row, whatever the planner's statistics (a correlated NOT EXISTS over fresh,
    unanalysed tables was planned as a nested loop over every lease of the annotator, per
    comparison)."""
    qs = Comparison.objects.filter(campaign=campaign, status=Comparison.Status.OPEN, kind=kind).exclude(
        pk__in=Assignment.objects.filter(annotator=annotator).values("comparison_id")
    )
    if kind == Comparison.Kind.NORMAL:
        qs = qs.filter(vote_count__lt=F("votes_required") - F("leased"))
    return qs


def _count(qs: QuerySet) -> Coalesce:
    """The number of rows of ``qs``, as a subquery (no GROUP BY: one row, or none when empty)."""
    return Coalesce(Subquery(qs.order_by().annotate(n=Func(F("pk"), function="COUNT")).values("n")), 0,
                    output_field=IntegerField())


def _first(qs: QuerySet[Comparison]) -> QuerySet[Comparison]:
    """The first ``PROGRESS_COUNT_CAP`` + 1 rows of ``qs`` in hand-out order (its index): a count
    over them stops there, whatever the campaign's size."""
    return Comparison.objects.filter(pk__in=qs.order_by("vote_count", "pk").values("pk")[:PROGRESS_COUNT_CAP + 1])


def _progress_query(*, campaign, annotator, gold: bool):
    mine = Assignment.objects.filter(annotator=annotator, campaign=campaign)
    counts = {
        "done": _count(mine.filter(state=Assignment.State.DONE)),
        "skipped": _count(mine.filter(state=Assignment.State.SKIPPED)),
        "normal": _count(_first(comparisons_open_to(campaign=campaign, annotator=annotator))),
    }
    if gold:
        counts["gold"] = _count(_first(comparisons_open_to(campaign=campaign, annotator=annotator, kind=Comparison.Kind.GOLD)))
    return Campaign.objects.filter(pk=campaign).values_list(*counts.values())


_PROGRESS = {gold: Prepared(lambda gold=gold, **inputs: _progress_query(gold=gold, **inputs), campaign=int, annotator=int)
             for gold in (False, True)}


def annotator_progress(*, campaign: Campaign, annotator: AbstractBaseUser) -> dict:
    """Done / skipped by this annotator, and how many comparisons are still open to them, counted
    up to ``PROGRESS_COUNT_CAP`` (``remaining_capped``: more are open than ``remaining`` says).

    ``remaining`` counts gold items with normal ones (when the campaign hands out gold at all),
    and is 0 when no normal item is open to them (``assignment_next`` hands out gold only beside
    normal work): every lease, whatever its kind, lowers it by one, except the last normal one,
    which takes it to 0. Counting normal items only told gold apart: the counter stood still after
    a gold lease and dropped after a normal one. One statement, every count a subquery, compiled
    once (``Prepared``). Above the cap the counter stands still whatever is leased, so it tells no
    more about gold there."""
    rows = _PROGRESS[campaign.gold_rate > 0].rows(campaign=campaign.pk, annotator=annotator.pk)
    done, skipped, normal, gold = (*(rows[0] if rows else (0, 0, 0)), 0)[:4]  # no row: the campaign is gone
    remaining = normal + gold if normal else 0
    return {"done": done, "skipped": skipped, "remaining": min(remaining, PROGRESS_COUNT_CAP),
            "remaining_capped": remaining > PROGRESS_COUNT_CAP}
