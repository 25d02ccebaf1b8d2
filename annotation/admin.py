"""Django admin: how admins manage campaigns, guidelines, members, users and exports for now.

Votes, preferences, responses, comparisons and assignments are records of what happened:
read-only here (no add, change or delete, nor a bulk delete), as are runs, evaluations and
promotions; campaigns are deactivated, not deleted. Deleting a vote left its comparison's
``vote_count`` counting a vote that was gone, so nothing here deletes those rows, neither
directly nor in cascade: the admin refuses to delete a parent (a prompt, a user) whose cascade
reaches a model whose admin refuses deletion.
Guideline versions are immutable; editing the guideline on a campaign publishes a new version.
Campaign members (who may annotate in a campaign) are added and removed on the campaign's page
or with the "add to campaign" action on users; both go through ``services.campaign_members_*``.
"""

from django import forms
from django.contrib import admin
from django.contrib import messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import StreamingHttpResponse

from annotation import enqueue, selectors, services
from annotation.models import (
    Assignment,
    AuditEvent,
    Campaign,
    CampaignMembership,
    Comparison,
    Evaluation,
    GuidelineVersion,
    Judge,
    ModelVersion,
    PolicyPromotion,
    Preference,
    Prompt,
    Response,
    RetrainPolicy,
    TrainingRun,
    Vote,
)
from annotation.parsing import jsonl_lines
from annotation.snapshots import snapshot_rows


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records: listed and viewable (the change page shows them read-only), never added, changed
    or deleted here; without the delete permission the bulk "delete selected" action is gone too."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class CampaignForm(forms.ModelForm):
    guideline = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "cols": 100}),
        help_text="Markdown. Saving a changed text publishes a new immutable version; votes keep the version they were cast under.",
    )

    class Meta:
        model = Campaign
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            current = selectors.campaign_guideline(campaign=self.instance)
            self.fields["guideline"].initial = current.text if current else ""
        if "training_judge" in self.fields:  # only this campaign's own judges
            self.fields["training_judge"].queryset = Judge.objects.filter(campaign_id=self.instance.pk or 0)


class GuidelineInline(admin.TabularInline):
    model = GuidelineVersion
    fields = ("version", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


class RetrainPolicyInline(admin.StackedInline):
    """The campaign's periodic retraining (the config is checked against the trainer's on save)."""

    model = RetrainPolicy
    fields = ("enabled", "kind", "config", "data_scope", "every_n_preferences", "min_interval_minutes")
    extra = 0
    max_num = 1


class JudgeInline(admin.TabularInline):
    """The campaign's AI judges (``annotation.models.Judge``); their votes: ``manage.py judge``,
    the API's ``/judges/<name>/run/``."""

    model = Judge
    extra = 0
    fields = ("name", "kind", "model", "base_url", "api_key_env", "both_orders", "batch_size", "concurrency", "enabled")


class MembershipInline(admin.TabularInline):
    """Who may annotate in the campaign. Rows are added or removed, never edited (another user is
    another membership); saving goes through the services (``CampaignAdmin.save_formset``)."""

    model = CampaignMembership
    fk_name = "campaign"
    fields = ("user", "added_by", "added_at")
    readonly_fields = ("added_by", "added_at")
    autocomplete_fields = ("user",)
    extra = 0
    verbose_name_plural = "Members (annotators who may work in this campaign; reviewers and admins see every campaign)"

    def has_change_permission(self, request, obj=None):
        return False  # existing rows show read-only; new rows and the delete boxes stay


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = ("slug", "name", "is_active", "policy", "arena_policy", "buffer_size", "votes_per_pair", "gold_rate", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [GuidelineInline, MembershipInline, RetrainPolicyInline, JudgeInline]
    actions = ["export_preferences", "sample_pairs_now"]

    def has_delete_permission(self, request, obj=None):
        # Deleting a campaign would erase its votes, preferences and guideline history in
        # cascade: deactivate it (is_active) instead.
        return False

    def save_formset(self, request, form, formset, change):
        if formset.model is not CampaignMembership:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # collects new and deleted rows, writes nothing
        services.campaign_members_remove(campaign=form.instance, users=[m.user for m in formset.deleted_objects],
                                         removed_by=request.user)
        services.campaign_members_add(campaign=form.instance, users=[m.user for m in formset.new_objects], added_by=request.user)

    def get_readonly_fields(self, request, obj=None):
        # The active policy changes only by promotion or roll-back (console or API), which
        # records who, when and why; an edit here would bypass that record and confuse the next
        # roll-back. A new campaign may start from any policy.
        return ("policy",) if obj is not None else ()

    @admin.action(description="Sample a buffer's worth of pairs now (gpu worker)", permissions=["change"])
    def sample_pairs_now(self, request, queryset):
        for campaign in queryset:
            n = campaign.buffer_size or 20
            transaction.on_commit(lambda pk=campaign.pk, n=n: enqueue.sample_pairs(pk, n))
        self.message_user(request, f"Sampling enqueued for {queryset.count()} campaign(s) on the gpu queue.", messages.SUCCESS)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        services.guideline_publish(campaign=form.instance, text=form.cleaned_data["guideline"], user=request.user)

    @admin.action(description="Export preferences (TRL JSONL with metadata)", permissions=["export"])
    def export_preferences(self, request, queryset):
        campaign = queryset.first()
        services.audit_record(actor=request.user, action=AuditEvent.Action.EXPORT, campaign=campaign, target="trl",
                              details={"with_meta": True, "via": "admin"})
        rows = snapshot_rows(lambda: selectors.preferences_export_rows(campaign=campaign, with_meta=True))
        response = StreamingHttpResponse(jsonl_lines(rows), content_type="application/jsonl")
        response["Content-Disposition"] = f'attachment; filename="{campaign.slug}-preferences.jsonl"'
        return response

    def has_export_permission(self, request):
        return request.user.has_perm("annotation.export_preferences")


@admin.register(GuidelineVersion)
class GuidelineVersionAdmin(ReadOnlyAdmin):
    list_display = ("campaign", "version", "created_by", "created_at")
    list_filter = ("campaign",)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base", "parent", "artifact_path", "training_run", "created_at")
    list_filter = ("kind",)


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "campaign", "base_version", "status", "trigger", "created_by", "step", "total_steps", "device",
                    "created_at", "finished_at")
    list_filter = ("kind", "status", "trigger")


@admin.register(RetrainPolicy)
class RetrainPolicyAdmin(admin.ModelAdmin):
    list_display = ("campaign", "enabled", "kind", "every_n_preferences", "min_interval_minutes", "updated_at")
    list_filter = ("enabled", "kind")


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
    """Evaluations are made by the API, the shell and the training worker (services.evaluation_*): recorded here."""

    list_display = ("id", "campaign", "candidate", "baseline", "status", "n_prompts", "win_rate", "kl", "decision", "created_at")
    list_filter = ("campaign", "status", "decision")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Who did what (guideline edits, promotions and roll-backs, exports, membership changes),
    written by the services; admins only (nobody else has ``view_auditevent``)."""

    list_display = ("created_at", "actor", "action", "campaign", "target")
    list_filter = ("action", "campaign")
    search_fields = ("target", "actor__username")
    date_hierarchy = "created_at"


@admin.register(PolicyPromotion)
class PolicyPromotionAdmin(ReadOnlyAdmin):
    """Promotions and roll-backs happen through the API (services.campaign_policy_*): recorded here."""

    list_display = ("id", "campaign", "action", "from_version", "to_version", "by", "created_at")
    list_filter = ("campaign", "action")


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    """Prompts come in through import (command or API), which validates and de-duplicates them.
    A prompt nothing was made from yet may be deleted: the cascade to its responses,
    comparisons and preferences is refused by their admins (read-only records)."""

    def has_delete_permission(self, request, obj=None):
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    list_display = ("id", "campaign", "split", "tags", "created_at")
    list_filter = ("campaign", "split")


@admin.register(Response)
class ResponseAdmin(ReadOnlyAdmin):
    list_display = ("id", "prompt", "model_version", "source", "token_count", "logprob_sum", "finish_reason", "created_at")
    list_filter = ("source", "model_version")


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "kind", "status", "vote_count", "leased", "votes_required", "created_at")
    list_filter = ("campaign", "kind", "status")


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ("id", "comparison", "annotator", "state", "order", "leased_at", "expires_at")
    list_filter = ("state",)


@admin.register(Vote)
class VoteAdmin(ReadOnlyAdmin):
    list_display = ("id", "comparison", "annotator", "judge", "choice", "strength", "guideline_version", "seconds_spent", "created_at")
    list_filter = ("comparison__campaign", "choice")


@admin.register(Preference)
class PreferenceAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "source", "n_votes", "agreement", "margin", "created_at")
    list_filter = ("campaign", "source")


# ---------------------------------------------------------------- users: campaign membership


class CampaignActionForm(ActionForm):
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.order_by("slug"), required=False, empty_label="(campaign)",
                                      help_text="for the add / remove campaign actions")


User = get_user_model()
admin.site.unregister(User)  # registered by django.contrib.auth (imported above): extend it


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """Django's user admin, plus adding the selected users to a campaign (or removing them): pick
    the campaign beside the action menu."""

    action_form = CampaignActionForm
    actions = ["add_to_campaign", "remove_from_campaign"]

    def has_members_permission(self, request):
        return request.user.has_perm("annotation.add_campaignmembership") and request.user.has_perm(
            "annotation.delete_campaignmembership")

    def _chosen_campaign(self, request) -> Campaign | None:
        try:
            campaign = CampaignActionForm.base_fields["campaign"].clean(request.POST.get("campaign"))
        except ValidationError:
            campaign = None
        if campaign is None:
            self.message_user(request, "Choose a campaign beside the action first; nothing changed.", messages.ERROR)
        return campaign

    @admin.action(description="Add selected users to the chosen campaign", permissions=["members"])
    def add_to_campaign(self, request, queryset):
        if campaign := self._chosen_campaign(request):
            n = services.campaign_members_add(campaign=campaign, users=queryset, added_by=request.user)
            self.message_user(request, f"{n} user(s) added to '{campaign.slug}' ({queryset.count() - n} already members).",
                              messages.SUCCESS)

    @admin.action(description="Remove selected users from the chosen campaign", permissions=["members"])
    def remove_from_campaign(self, request, queryset):
        if campaign := self._chosen_campaign(request):
            n = services.campaign_members_remove(campaign=campaign, users=queryset, removed_by=request.user)
            self.message_user(request, f"{n} user(s) removed from '{campaign.slug}'.", messages.SUCCESS)
