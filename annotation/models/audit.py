"""The audit log: who did what to a campaign's setup or data, and when. Rows are written by the
services in the same transaction as the action (so a rolled-back action leaves no row), and
are never changed or deleted through the application (the admin shows them read-only)."""

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        GUIDELINE_PUBLISH = "guideline_publish", "guideline published"
        POLICY_PROMOTE = "policy_promote", "policy promoted"
        POLICY_ROLLBACK = "policy_rollback", "policy rolled back"
        EXPORT = "export", "preferences exported"
        MEMBERS_ADD = "members_add", "annotators added"
        MEMBERS_REMOVE = "members_remove", "annotators removed"

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                              help_text="Empty for the system or a command run without a user.")
    action = models.CharField(max_length=32, choices=Action.choices)
    campaign = models.ForeignKey("annotation.Campaign", null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events")
    target = models.CharField(max_length=200, blank=True, help_text="What was acted on: a version, a format, user names.")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["campaign", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.get_action_display()} {self.target}"
