"""Django admin: how admins manage campaigns, guidelines, users and exports for now.

Votes, preferences, responses and assignments are records of what happened: read-only here.
Guideline versions are immutable; editing the guideline on a campaign publishes a new version.
"""

from django import forms
from django.contrib import admin
from django.contrib import messages
from django.db import transaction
from django.http import StreamingHttpResponse

from annotation import enqueue, selectors, services
from annotation.models import (
    Assignment,
    Campaign,
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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
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


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = ("slug", "name", "is_active", "policy", "arena_policy", "buffer_size", "votes_per_pair", "gold_rate", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [GuidelineInline, RetrainPolicyInline, JudgeInline]
    actions = ["export_preferences", "sample_pairs_now"]

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
        rows = selectors.preferences_export_rows(campaign=campaign, with_meta=True)
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


@admin.register(PolicyPromotion)
class PolicyPromotionAdmin(ReadOnlyAdmin):
    """Promotions and roll-backs happen through the API (services.campaign_policy_*): recorded here."""

    list_display = ("id", "campaign", "action", "from_version", "to_version", "by", "created_at")
    list_filter = ("campaign", "action")


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    """Prompts come in through import (command or API), which validates and de-duplicates them."""

    list_display = ("id", "campaign", "split", "tags", "created_at")
    list_filter = ("campaign", "split")


@admin.register(Response)
class ResponseAdmin(ReadOnlyAdmin):
    list_display = ("id", "prompt", "model_version", "source", "token_count", "logprob_sum", "finish_reason", "created_at")
    list_filter = ("source", "model_version")


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "kind", "status", "vote_count", "votes_required", "created_at")
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
