"""REST API for evaluations: list, detail, and evaluate any policy version on demand (202).
Thin views over ``services.evaluation_create``; permissions as the training API (reading
needs ``annotation.view_trainingrun``, starting one ``annotation.manage_training``). An
evaluation that passes the campaign's gate promotes its candidate itself; otherwise an admin
promotes on the console's evaluation page or through ``POST /api/campaigns/{slug}/promote/``."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.api import perm
from annotation.api_runs import MANAGE, VIEW, CampaignScopedListApi, errors
from annotation.limits import DEFAULT_EVAL_PROMPTS, MAX_EVAL_PROMPTS
from annotation.models import Evaluation
from training.seeds import SEED_BITS


class EvaluationIn(serializers.Serializer):
    campaign = serializers.SlugField(help_text="Campaign slug: its eval-split prompts, its active policy, its reward model.")
    candidate = serializers.CharField(help_text="Name of the policy version to evaluate against the campaign's active policy.")
    seed = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0, max_value=2**SEED_BITS - 1,
                                    help_text="Base seed of both policies' samples (random when omitted; stored).")
    max_prompts = serializers.IntegerField(required=False, default=DEFAULT_EVAL_PROMPTS, min_value=1, max_value=MAX_EVAL_PROMPTS,
                                           help_text="At most this many eval prompts, the oldest first.")


class EvaluationOut(serializers.ModelSerializer):
    campaign = serializers.CharField(source="campaign.slug")
    candidate = serializers.CharField(source="candidate.name")
    baseline = serializers.CharField(source="baseline.name", help_text="The active policy when it was created.")
    reference = serializers.CharField(source="reference.name", allow_null=True, help_text="KL reference: the candidate's root ancestor.")
    reward_model = serializers.CharField(source="reward_model.name", allow_null=True, help_text="The judge.")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    promotion = serializers.IntegerField(source="promotion_id", allow_null=True, help_text="The promotion the gate made.")

    class Meta:
        model = Evaluation
        fields = [
            "id", "campaign", "candidate", "baseline", "reference", "reward_model", "status", "trigger", "created_by",
            "seed", "max_prompts", "n_prompts", "wins", "ties", "losses", "win_rate", "win_low", "win_high", "kl",
            "mean_length_new", "mean_length_active", "distinct2_new", "distinct2_active", "decision", "decision_reason",
            "promotion", "error", "created_at", "started_at", "finished_at",
        ]


class EvaluationDetailOut(EvaluationOut):
    examples = serializers.ListField(
        child=serializers.DictField(),
        help_text='A few pairs: {"prompt": [...], "new": "...", "active": "...", "reward_new": 0.4, "reward_active": -0.1, '
        '"outcome": "win" | "tie" | "loss", "seed": 123}.',
    )

    class Meta(EvaluationOut.Meta):
        fields = [*EvaluationOut.Meta.fields, "sampling_params", "examples"]


def _detail(evaluation_id: int, user, *, code: int = status.HTTP_200_OK) -> Response:
    evaluation = get_object_or_404(selectors.evaluations_visible_to(user=user), pk=evaluation_id)
    return Response(EvaluationDetailOut(evaluation).data, status=code)


class EvaluationListApi(CampaignScopedListApi):
    serializer_class = EvaluationOut
    visible_to = staticmethod(selectors.evaluations_visible_to)

    @extend_schema(
        parameters=[OpenApiParameter("campaign", str, description="Campaign slug")],
        responses={200: EvaluationOut(many=True), **errors(403, 404)},
        summary="Evaluations, newest first",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=EvaluationIn,
        responses={202: EvaluationDetailOut, **errors(400, 403, 409)},
        summary="Evaluate a policy version against the campaign's active policy",
        description="Queues the evaluation on the gpu workers and answers 202 with it. Both policies answer the "
        "campaign's eval prompts with the same seed; the campaign's latest reward model judges (win rate, ties half, "
        "95% Wilson interval), with KL to the candidate's root ancestor, mean length and distinct-2. Then the campaign's "
        "gate (`gate_min_win_rate`, `gate_max_kl`) promotes the candidate or holds it (`decision`). A second evaluation "
        "of the same version while one is queued or running answers 409 with its id in `details.evaluation_id`.",
    )
    def post(self, request):
        data = EvaluationIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        campaign = selectors.campaign_named_for(slug=v["campaign"], user=request.user)
        candidate = selectors.model_version_named(name=v["candidate"], field="candidate")
        evaluation = services.evaluation_create(
            campaign=campaign, candidate=candidate, created_by=request.user, trigger=Evaluation.Trigger.API,
            seed=v["seed"], max_prompts=v["max_prompts"],
        )
        return _detail(evaluation.pk, request.user, code=status.HTTP_202_ACCEPTED)


class EvaluationDetailApi(APIView):
    permission_classes = [perm(VIEW)]

    @extend_schema(responses={200: EvaluationDetailOut, **errors(403, 404)}, summary="One evaluation with example pairs")
    def get(self, request, evaluation_id: int):
        return _detail(evaluation_id, request.user)


class EvaluationCancelApi(APIView):
    permission_classes = [perm(MANAGE)]

    @extend_schema(
        request=None,
        responses={200: EvaluationDetailOut, **errors(403, 404, 409)},
        summary="Cancel a queued or running evaluation",
        description="Its figures, when its worker ends, are not stored and the gate is not applied. Cancelling a "
        "cancelled evaluation changes nothing; one that succeeded or failed answers 409.",
    )
    def post(self, request, evaluation_id: int):
        evaluation = get_object_or_404(selectors.evaluations_visible_to(user=request.user), pk=evaluation_id)
        services.evaluation_cancel(evaluation_id=evaluation.pk)
        return _detail(evaluation_id, request.user)
