"""REST API for label quality and AI judges: a campaign's quality report (agreement, each
voter's quality, Dawid-Skene reliabilities, judges' agreement with people), its judges, and
running a judge. Reading needs ``annotation.review_votes`` (reviewers, admins: annotators never
see judge votes or statistics); running a judge ``annotation.manage_training``."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import services
from annotation.api import perm
from annotation.api_runs import MANAGE, _campaign, errors
from annotation.models import Judge
from annotation.quality import campaign_quality

REVIEW = "annotation.review_votes"


class JudgeOut(serializers.ModelSerializer):
    voter = serializers.CharField(read_only=True, help_text="Its votes' voter name: judge:<name>.")

    class Meta:
        model = Judge
        fields = ["id", "name", "voter", "kind", "model", "base_url", "api_key_env", "both_orders", "batch_size", "concurrency",
                  "enabled", "created_at"]


class QualityOut(serializers.Serializer):
    campaign = serializers.CharField()
    votes = serializers.IntegerField()
    people = serializers.DictField(help_text="Among people: percent agreement, Fleiss' kappa, Krippendorff's alpha, "
                                   "pairwise Cohen's kappa (and how many comparisons each pair shares).")
    everyone = serializers.DictField(allow_null=True, help_text="The same with the AI judges counted as voters.")
    voters = serializers.ListField(child=serializers.DictField(), help_text="Per annotator and judge: agreement with the "
                                   "leave-one-out majority, gold accuracy, position and length bias, tie / both-bad rates, "
                                   "median seconds, outlier flag, review flags, Dawid-Skene reliability.")
    judges = serializers.ListField(child=serializers.DictField(), help_text="Each judge's agreement with people's majority, "
                                   "with its 95% Wilson interval.")


class CampaignQualityApi(APIView):
    permission_classes = [perm(REVIEW)]

    @extend_schema(responses={200: QualityOut, **errors(403, 404)}, summary="A campaign's agreement and voter quality")
    def get(self, request, slug: str):
        return Response(campaign_quality(campaign=_campaign(slug, request.user)))


class JudgeListApi(APIView):
    permission_classes = [perm(REVIEW)]

    @extend_schema(responses={200: JudgeOut(many=True), **errors(403, 404)}, summary="A campaign's AI judges")
    def get(self, request, slug: str):
        return Response(JudgeOut(_campaign(slug, request.user).judges.order_by("name"), many=True).data)


class JudgeRunApi(APIView):
    permission_classes = [perm(MANAGE)]

    @extend_schema(request=None, responses={202: JudgeOut, **errors(400, 403, 404)},
                   summary="Let a judge vote on the comparisons it has not voted on",
                   description="Queued on the gpu workers for a local or reward judge, on the default queue for an "
                   "endpoint judge; answers 202. A switched-off judge answers 400.")
    def post(self, request, slug: str, name: str):
        judge = get_object_or_404(Judge.objects.select_related("campaign"), campaign=_campaign(slug, request.user), name=name)
        services.judge_run_request(judge=judge)
        return Response(JudgeOut(judge).data, status=status.HTTP_202_ACCEPTED)


class LeaderboardOut(serializers.Serializer):
    campaign = serializers.CharField()
    battles = serializers.IntegerField(help_text="People's votes on comparisons of two different model versions.")
    baseline = serializers.CharField(allow_null=True, help_text="The model the length-controlled win rates are against.")
    ratings = serializers.ListField(child=serializers.DictField(), help_text='Best first: {"model", "rating" (Elo scale), '
                                    '"low", "high" (95% bootstrap), "rank", "battles", "wins", "lc_win_rate"}.')


class LeaderboardApi(APIView):
    permission_classes = [perm("annotation.view_trainingrun")]

    @extend_schema(
        parameters=[OpenApiParameter("baseline", str, description="Model version name (default: the active policy)")],
        responses={200: LeaderboardOut, **errors(403, 404)},
        summary="Model leaderboard: Bradley-Terry ratings with bootstrap intervals and Arena ranks",
    )
    def get(self, request, slug: str):
        from annotation.quality import campaign_leaderboard

        return Response(campaign_leaderboard(campaign=_campaign(slug, request.user), baseline=request.query_params.get("baseline")))
