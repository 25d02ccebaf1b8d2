"""Writes to the audit log (``AuditEvent``). Call inside the action's own transaction."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from annotation.models import AuditEvent, Campaign


def audit_record(*, actor: AbstractBaseUser | None, action: str, campaign: Campaign | None = None, target: str = "",
                 details: dict | None = None) -> AuditEvent:
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(actor=user, action=action, campaign=campaign, target=target[:200], details=details or {})
