"""REST API for training: start, list, watch and cancel runs, promote and roll back a
campaign's policy. Thin views over ``services.training_run_*`` and ``services.campaign_policy_*``;
reading needs ``annotation.view_trainingrun`` (reviewers, admins), writing
``annotation.manage_training`` (admins)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.api import perm
from annotation.limits import MAX_PROMOTION_REASON_CHARS
from annotation.models import Campaign, PolicyPromotion, TrainingRun
from training.recipes import RECIPES

VIEW, MANAGE = "annotation.view_trainingrun", "annotation.manage_training"
RECIPE_KINDS = sorted(RECIPES)  # the kinds a run can be started as (a named enum in the schema)

ErrorOut = inline_serializer(
    "ErrorOut",
    {
        "error": inline_serializer(
            "ErrorBody",
            {"code": serializers.CharField(), "message": serializers.CharField(), "details": serializers.DictField()},
        )
    },
)


def errors(*codes: int) -> dict:
    """Documented error responses (all in the one error shape)."""
    words = {400: "Invalid input", 403: "Not allowed", 404: "Not found", 409: "Conflict with the current state"}
    return {code: OpenApiResponse(ErrorOut, description=words[code]) for code in codes}


def _campaign(slug: str, user) -> Campaign:
    return get_object_or_404(selectors.campaigns_for_user(user=user), slug=slug)


def _run(run_id: int, user) -> TrainingRun:
    return get_object_or_404(selectors.training_runs_visible_to(user=user), pk=run_id)


# ---------------------------------------------------------------- shapes


class TrainingRunIn(serializers.Serializer):
    campaign = serializers.SlugField(help_text="Campaign slug: the run trains on its training preferences.")
    kind = serializers.ChoiceField(choices=RECIPE_KINDS, help_text="sft (on chosen responses), reward, dpo.")
    config = serializers.DictField(required=False, default=dict, help_text="Trainer config overrides; unknown keys are errors.")
    base_version = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, default=None,
        help_text="Model version name to train from (default: the campaign's active policy).",
    )
    data_scope = serializers.ChoiceField(
        choices=TrainingRun.DataScope.choices, default=TrainingRun.DataScope.ALL,
        help_text="all: every training preference of the campaign; on_policy: only those on pairs the base version sampled.",
    )


class TrainingRunOut(serializers.ModelSerializer):
    campaign = serializers.CharField(source="campaign.slug", allow_null=True)
    base_version = serializers.CharField(source="base_version.name")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    output_version = serializers.SerializerMethodField(help_text="The version this run made, once it succeeded.")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "campaign", "kind", "status", "trigger", "created_by", "config", "base_version", "data_scope", "output_version",
            "device", "error", "step", "total_steps", "created_at", "started_at", "finished_at",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_output_version(self, run: TrainingRun) -> str | None:
        outputs = list(run.outputs.all())  # prefetched by the selector
        return outputs[0].name if outputs else None


class TrainingRunDetailOut(TrainingRunOut):
    eta_seconds = serializers.SerializerMethodField(help_text="Seconds left (running runs with a logged step time).")
    metrics = serializers.SerializerMethodField(help_text='One object per logged step: {"step": 10, "loss": 0.61, ...}.')

    class Meta(TrainingRunOut.Meta):
        fields = [*TrainingRunOut.Meta.fields, "data_manifest", "eta_seconds", "metrics"]

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_eta_seconds(self, run: TrainingRun) -> float | None:
        return selectors.training_run_eta_seconds(run=run)

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_metrics(self, run: TrainingRun) -> list[dict]:
        return selectors.training_run_metrics(run=run)


class PromoteIn(serializers.Serializer):
    version = serializers.CharField(help_text="Name of the policy version to promote.")
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_PROMOTION_REASON_CHARS)


class RollbackIn(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_PROMOTION_REASON_CHARS)


class PromotionOut(serializers.ModelSerializer):
    campaign = serializers.CharField(source="campaign.slug")
    from_version = serializers.CharField(source="from_version.name", allow_null=True)
    to_version = serializers.CharField(source="to_version.name", allow_null=True, help_text="null: back to the default policy.")
    by = serializers.CharField(source="by.username", allow_null=True)

    class Meta:
        model = PolicyPromotion
        fields = ["id", "campaign", "action", "from_version", "to_version", "by", "reason", "created_at"]


def _detail(run_id: int, user, *, code: int = status.HTTP_200_OK) -> Response:
    return Response(TrainingRunDetailOut(_run(run_id, user)).data, status=code)


# ---------------------------------------------------------------- views


class CampaignScopedListApi(generics.ListAPIView):
    """A list anyone with the view permission reads (``?campaign=slug`` narrows it) and a POST
    that needs the manage permission. ``visible_to(user=, campaign=)``: the selector."""

    visible_to = None

    def get_permissions(self):
        return [perm(VIEW if self.request.method in SAFE_METHODS else MANAGE)()]

    def get_queryset(self):
        campaign = None
        if slug := self.request.query_params.get("campaign"):
            campaign = _campaign(slug, self.request.user)
        return type(self).visible_to(user=self.request.user, campaign=campaign)


class TrainingRunListApi(CampaignScopedListApi):
    serializer_class = TrainingRunOut
    visible_to = staticmethod(selectors.training_runs_visible_to)

    @extend_schema(
        parameters=[OpenApiParameter("campaign", str, description="Campaign slug")],
        responses={200: TrainingRunOut(many=True), **errors(403, 404)},
        summary="Training runs, newest first",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=TrainingRunIn,
        responses={202: TrainingRunDetailOut, **errors(400, 403, 409)},
        summary="Start a training run",
        description="Queues the run on the gpu workers and answers 202 with it. A campaign has at most one queued or "
        "running run per kind: a second answers 409 with the first's id in `details.run_id`.",
    )
    def post(self, request):
        data = TrainingRunIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        campaign = selectors.campaign_named_for(slug=v["campaign"], user=request.user)
        base = selectors.model_version_named(name=v["base_version"], field="base_version") if v["base_version"] else None
        run = services.training_run_create(
            campaign=campaign, kind=v["kind"], config=v["config"], base_version=base,
            created_by=request.user, trigger=TrainingRun.Trigger.API, data_scope=v["data_scope"],
        )
        return _detail(run.pk, request.user, code=status.HTTP_202_ACCEPTED)


class TrainingRunDetailApi(APIView):
    permission_classes = [perm(VIEW)]

    @extend_schema(responses={200: TrainingRunDetailOut, **errors(403, 404)}, summary="One run with its metrics")
    def get(self, request, run_id: int):
        return _detail(run_id, request.user)


class TrainingRunCancelApi(APIView):
    permission_classes = [perm(MANAGE)]

    @extend_schema(
        request=None,
        responses={200: TrainingRunDetailOut, **errors(403, 404, 409)},
        summary="Cancel a queued or running run",
        description="A running run stops before its next step. Cancelling a cancelled run changes nothing; "
        "one that succeeded or failed answers 409.",
    )
    def post(self, request, run_id: int):
        services.training_run_cancel(run_id=_run(run_id, request.user).pk)
        return _detail(run_id, request.user)


class PromotionListApi(CampaignScopedListApi):
    serializer_class = PromotionOut
    visible_to = staticmethod(selectors.promotions_visible_to)

    @extend_schema(
        parameters=[OpenApiParameter("campaign", str, description="Campaign slug")],
        responses={200: PromotionOut(many=True), **errors(403, 404)},
        summary="Promotions and roll-backs of campaigns' policies, newest first",
        description="Who changed a campaign's active policy, when, from which version to which, and why (a gate's "
        "reason names the evaluation and its figures). Promote and roll back: `/api/campaigns/{slug}/promote/`, "
        "`/api/campaigns/{slug}/rollback/`.",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class CampaignPromoteApi(APIView):
    permission_classes = [perm(MANAGE)]

    @extend_schema(
        request=PromoteIn,
        responses={200: PromotionOut, **errors(400, 403, 404, 409)},
        summary="Promote a version to the campaign's active policy",
        description="The next buffer refill samples from it; comparisons already sampled keep their versions.",
    )
    def post(self, request, slug: str):
        campaign = _campaign(slug, request.user)
        data = PromoteIn(data=request.data)
        data.is_valid(raise_exception=True)
        version = selectors.model_version_named(name=data.validated_data["version"])
        promotion = services.campaign_policy_promote(
            campaign=campaign, version=version, user=request.user, reason=data.validated_data["reason"]
        )
        return Response(PromotionOut(promotion).data)


class CampaignRollbackApi(APIView):
    permission_classes = [perm(MANAGE)]

    @extend_schema(
        request=RollbackIn,
        responses={200: PromotionOut, **errors(403, 404, 409)},
        summary="Roll the campaign's policy back to the one before its latest promotion",
        description="Roll-backs undo promotions newest first; 409 when none is left to undo.",
    )
    def post(self, request, slug: str):
        campaign = _campaign(slug, request.user)
        data = RollbackIn(data=request.data)
        data.is_valid(raise_exception=True)
        promotion = services.campaign_policy_rollback(campaign=campaign, user=request.user, reason=data.validated_data["reason"])
        return Response(PromotionOut(promotion).data)
