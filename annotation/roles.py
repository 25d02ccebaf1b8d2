"""Roles are Django groups with a fixed set of permissions.

- annotator: works through their own task stream in the campaigns they are members of
  (``CampaignMembership``); sees only their own votes, never gold answers.
- reviewer: sees every active campaign, every vote of a campaign and the training runs (API and
  read-only Django admin).
- admin: manages campaigns, their members, guidelines, users and exports (Django admin, API); starts and
  cancels training runs and promotes or rolls back policies (``manage_training``).
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

ANNOTATOR, REVIEWER, ADMIN = "annotator", "reviewer", "admin"
ROLES = (ANNOTATOR, REVIEWER, ADMIN)
_VIEW = [
    "view_campaign", "view_guidelineversion", "view_prompt", "view_response", "view_comparison",
    "view_assignment", "view_vote", "view_preference", "view_modelversion",
    "view_trainingrun", "view_trainingmetric", "view_retrainpolicy", "view_policypromotion", "view_evaluation",
    "view_campaignmembership",
]
ROLE_PERMISSIONS = {
    ANNOTATOR: {"annotation": ["annotate"]},
    REVIEWER: {"annotation": ["review_votes", *_VIEW]},
    ADMIN: {"annotation": "__all__", "auth": "__all__", "authtoken": "__all__"},
}
STAFF_ROLES = {REVIEWER, ADMIN}


def roles_ensure() -> dict[str, Group]:
    """Create the role groups and (re)set their permissions. Idempotent."""
    groups = {}
    with transaction.atomic():
        for role, apps in ROLE_PERMISSIONS.items():
            group, _ = Group.objects.get_or_create(name=role)
            perms = Permission.objects.none()
            for app, codenames in apps.items():
                qs = Permission.objects.filter(content_type__app_label=app)
                perms = perms | (qs if codenames == "__all__" else qs.filter(codename__in=codenames))
            group.permissions.set(perms)
            groups[role] = group
    return groups


def user_create(*, username: str, password: str, role: str, email: str = ""):
    """A user in one role; reviewers and admins may enter the Django admin (staff)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    groups = roles_ensure()
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=username, password=password, email=email, is_staff=role in STAFF_ROLES
        )
        user.groups.add(groups[role])
    return user
