"""REST API: thin views. Input serializers validate shapes; services do the work."""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, permissions, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.errors import ApplicationError, ImportRejected, InvalidInput
from annotation.limits import MAX_RATIONALE_CHARS, MAX_SECONDS_SPENT, MAX_SKIP_REASON_CHARS, PROGRESS_COUNT_CAP
from annotation.models import Assignment, AuditEvent, Campaign, Choice, Strength, Vote
from annotation.parsing import ImportReport, jsonl_lines, prompt_file_format
from annotation.rendering import markdown_html
from annotation.snapshots import snapshot_rows
from annotation.throttles import FailOpenScopedRateThrottle
from annotation.uploads import upload_guard, uploaded_lines

logger = logging.getLogger(__name__)



def perm(codename: str) -> type[permissions.BasePermission]:
    """A permission class requiring one Django permission (roles.py maps roles to them)."""

    class HasPerm(permissions.BasePermission):
        message = f"You need the '{codename}' permission for this."

        def has_permission(self, request, view):
            return bool(request.user and request.user.is_authenticated and request.user.has_perm(codename))

    HasPerm.__name__ = f"HasPerm_{codename.replace('.', '_')}"
    return HasPerm


def _campaign(slug: str, user) -> Campaign:
    # A campaign the user may not see (an annotator's non-member campaign, an inactive one)
    # answers the same 404 as an unknown slug: 403 would confirm that the slug exists.
    return get_object_or_404(selectors.campaigns_for_user(user=user), slug=slug)


# ---------------------------------------------------------------- output shapes


class GuidelineOut(serializers.Serializer):
    version = serializers.IntegerField()
    text = serializers.CharField()
    html = serializers.CharField()


class CampaignOut(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    description = serializers.CharField()
    is_active = serializers.BooleanField()
    votes_per_pair = serializers.IntegerField()
    guideline = GuidelineOut(allow_null=True)


def campaign_out(campaign: Campaign, *, with_guideline: bool = False) -> dict:
    g = selectors.campaign_guideline(campaign=campaign) if with_guideline else None
    return {
        "slug": campaign.slug,
        "name": campaign.name,
        "description": campaign.description,
        "is_active": campaign.is_active,
        "votes_per_pair": campaign.votes_per_pair,
        "guideline": {"version": g.version, "text": g.text, "html": markdown_html(g.text)} if g else None,
    }


class MessageOut(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    html = serializers.CharField()


class ShownResponseOut(serializers.Serializer):
    label = serializers.ChoiceField(choices=["A", "B"])
    text = serializers.CharField()
    html = serializers.CharField()


class AssignmentOut(serializers.Serializer):
    id = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    messages = MessageOut(many=True)
    responses = ShownResponseOut(many=True)
    guideline = GuidelineOut(allow_null=True)


class ProgressOut(serializers.Serializer):
    done = serializers.IntegerField()
    skipped = serializers.IntegerField()
    remaining = serializers.IntegerField(help_text=f"Comparisons still open to you, counted up to {PROGRESS_COUNT_CAP}")
    remaining_capped = serializers.BooleanField(help_text="true: more than `remaining` are open (the count stopped there)")


class NextOut(serializers.Serializer):
    assignment = AssignmentOut(allow_null=True)
    progress = ProgressOut()


def assignment_out(assignment: Assignment) -> dict:
    """What the annotator sees: prompt and the two responses in the order leased. Nothing about
    gold status, other votes or which response is which model."""
    c = assignment.comparison
    left, right = (c.response_a, c.response_b) if assignment.order == Assignment.Order.AB else (c.response_b, c.response_a)
    g = assignment.guideline_version
    return {
        "id": assignment.pk,
        "expires_at": assignment.expires_at,
        "messages": [{**m, "html": markdown_html(m["content"])} for m in c.prompt.messages],
        "responses": [
            {"label": label, "text": r.text, "html": markdown_html(r.text)} for label, r in (("A", left), ("B", right))
        ],
        "guideline": {"version": g.version, "text": g.text, "html": markdown_html(g.text)} if g else None,
    }


class VoteOut(serializers.ModelSerializer):
    campaign = serializers.CharField(source="comparison.campaign.slug")
    annotator = serializers.CharField(source="annotator.username", allow_null=True)
    guideline_version = serializers.IntegerField(source="guideline_version.version", allow_null=True)

    class Meta:
        model = Vote
        fields = [
            "id", "campaign", "comparison", "annotator", "judge", "choice", "strength", "rationale",
            "guideline_version", "order_shown", "seconds_spent", "created_at",
        ]


class ImportReportOut(serializers.Serializer):
    lines = serializers.IntegerField()
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    written = serializers.BooleanField()
    error_count = serializers.IntegerField(help_text="Bad lines in all")
    errors_truncated = serializers.BooleanField(help_text="True when only the first bad lines are listed")
    errors = inline_serializer("ImportError", {"line": serializers.IntegerField(), "reason": serializers.CharField()}, many=True)


# ---------------------------------------------------------------- views


class CampaignListApi(APIView):
    @extend_schema(responses=CampaignOut(many=True), summary="Campaigns you can see")
    def get(self, request):
        return Response([campaign_out(c) for c in selectors.campaigns_for_user(user=request.user)])


class CampaignDetailApi(APIView):
    @extend_schema(responses=CampaignOut, summary="One campaign with its current guideline")
    def get(self, request, slug: str):
        return Response(campaign_out(_campaign(slug, request.user), with_guideline=True))


class NextComparisonApi(APIView):
    permission_classes = [perm("annotation.annotate")]
    throttle_classes = [FailOpenScopedRateThrottle]
    throttle_scope = "annotate"  # PREFLOOP_ANNOTATE_RATE per user

    @extend_schema(
        request=None,
        responses=NextOut,
        summary="Lease the next comparison",
        description="Returns the comparison leased to you (the same one until you vote, skip or the "
        "lease expires), or `assignment: null` when nothing is left for you.",
    )
    def post(self, request, slug: str):
        return Response(next_out(_campaign(slug, request.user), request.user))


def next_out(campaign: Campaign, user) -> dict:
    """Lease the next comparison (``services.assignment_next``): next's answer (``NextOut``)."""
    assignment = services.assignment_next(campaign=campaign, annotator=user)
    return {
        "assignment": assignment_out(assignment) if assignment else None,
        "progress": selectors.annotator_progress(campaign=campaign, annotator=user),
    }


class StrictBooleanField(serializers.BooleanField):
    """true or false (JSON; "true" / "false" in a form) and nothing else: DRF's BooleanField also
    takes "0", "yes", "on"..., which the schema's boolean does not."""

    def to_internal_value(self, data):
        if type(data) is bool:
            return data
        if data in ("true", "false"):
            return data == "true"
        self.fail("invalid", input=data)


class StrictCharField(serializers.CharField):
    """A string and nothing else: DRF's CharField also turns a number into its text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class VoteIn(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Choice.choices, help_text="In shown terms: a = the left / first response.")
    strength = serializers.ChoiceField(choices=Strength.choices, required=False, allow_blank=True, default="")
    rationale = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_RATIONALE_CHARS, trim_whitespace=True)
    seconds_spent = serializers.FloatField(required=False, allow_null=True, default=None, min_value=0, max_value=MAX_SECONDS_SPENT)
    next = StrictBooleanField(
        required=False, default=False,
        help_text="true: once the vote is stored, lease your next comparison of the campaign and answer it as `next` "
        "(one request per comparison instead of two).",
    )


class VoteSubmitOut(serializers.Serializer):
    vote_id = serializers.IntegerField()
    created = serializers.BooleanField()
    detail = serializers.CharField()
    next = NextOut(
        required=False, allow_null=True,
        help_text="Only when the vote asked for it (`next: true`): what `POST /api/campaigns/{slug}/next/` answers "
        "(`assignment` null when nothing is left for you). null when no lease could be made (the campaign is "
        "no longer open to you): the vote is stored all the same; call next for the reason.",
    )


class VoteSubmitApi(APIView):
    permission_classes = [perm("annotation.annotate")]
    throttle_classes = [FailOpenScopedRateThrottle]
    throttle_scope = "annotate"  # PREFLOOP_ANNOTATE_RATE per user

    @extend_schema(
        request=VoteIn,
        responses={201: VoteSubmitOut, 200: VoteSubmitOut},
        summary="Vote on a leased comparison",
        description="Idempotent: submitting the same vote again answers 200 with created=false. With `next: true` "
        "the answer also holds your next lease (`next`, the shape of next's answer): one request per comparison.",
    )
    def post(self, request, assignment_id: int):
        data = VoteIn(data=request.data)
        data.is_valid(raise_exception=True)
        want_next = data.validated_data.pop("next")
        result = services.vote_submit(annotator=request.user, assignment_id=assignment_id, **data.validated_data)
        detail = "Vote recorded." if result.created else "This vote was already recorded; nothing changed."
        body = {"vote_id": result.vote.pk, "created": result.created, "detail": detail}
        if want_next:  # after the vote's commit: the vote stands whatever the lease does
            try:
                body["next"] = next_out(result.campaign, request.user)
            except ApplicationError:
                body["next"] = None
            except DatabaseError:  # e.g. no pooled connection in time: the stored vote is still answered
                logger.exception("vote %s stored; leasing the next comparison failed", result.vote.pk)
                body["next"] = None
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class SkipIn(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_SKIP_REASON_CHARS)


class SkipApi(APIView):
    permission_classes = [perm("annotation.annotate")]
    throttle_classes = [FailOpenScopedRateThrottle]
    throttle_scope = "annotate"  # PREFLOOP_ANNOTATE_RATE per user

    @extend_schema(request=SkipIn, responses={200: OpenApiResponse(description="Skipped")}, summary="Skip a leased comparison")
    def post(self, request, assignment_id: int):
        data = SkipIn(data=request.data)
        data.is_valid(raise_exception=True)
        services.assignment_skip(annotator=request.user, assignment_id=assignment_id, reason=data.validated_data["reason"])
        return Response({"detail": "Skipped."})


class VoteListApi(generics.ListAPIView):
    serializer_class = VoteOut

    @extend_schema(
        parameters=[OpenApiParameter("campaign", str, description="Campaign slug")],
        summary="Votes: your own, or a campaign's if you are a reviewer",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        campaign = None
        if slug := self.request.query_params.get("campaign"):
            campaign = _campaign(slug, self.request.user)
        return selectors.votes_visible_to(user=self.request.user, campaign=campaign)


class PreferenceExportApi(APIView):
    permission_classes = [perm("annotation.export_preferences")]

    @extend_schema(
        parameters=[
            OpenApiParameter("with_meta", bool, description="Add source, judges, votes, agreement, margin, strengths, rationales, models"),
            OpenApiParameter("export_format", str, enum=list(selectors.EXPORT_FORMATS),
                             description="trl: paired prompt/chosen/rejected (default); kto: unpaired prompt/completion/label"),
        ],
        responses={(200, "application/jsonl"): OpenApiTypes.STR},
        summary="Export preferences as TRL JSONL (streamed)",
    )
    def get(self, request, slug: str):
        campaign = _campaign(slug, request.user)
        with_meta = request.query_params.get("with_meta", "").lower() in ("1", "true", "yes")
        fmt = request.query_params.get("export_format") or "trl"  # not "format": DRF reads that one
        if fmt not in selectors.EXPORT_FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(selectors.EXPORT_FORMATS)}.", details={"export_format": fmt[:50]})
        services.audit_record(actor=request.user, action=AuditEvent.Action.EXPORT, campaign=campaign, target=fmt,
                              details={"with_meta": with_meta, "via": "api"})
        rows = snapshot_rows(lambda: selectors.preferences_export_rows(campaign=campaign, with_meta=with_meta, fmt=fmt))
        response = StreamingHttpResponse(jsonl_lines(rows), content_type="application/jsonl")
        name = "preferences" if fmt == "trl" else "kto"
        response["Content-Disposition"] = f'attachment; filename="{campaign.slug}-{name}.jsonl"'
        return response


class ImportIn(serializers.Serializer):
    file = serializers.FileField()
    strict = serializers.BooleanField(required=False, default=False)


class PreferenceImportIn(ImportIn):
    format = serializers.ChoiceField(choices=["trl", "hh"])


class UploadApi(APIView):
    """An import endpoint: its upload is refused over ``limits.MAX_UPLOAD_BYTES`` (413) before
    anything reads the body (authentication's CSRF check would), and counted while it is read."""

    parser_classes = [MultiPartParser, FormParser]

    def initial(self, request, *args, **kwargs):
        upload_guard(request._request)
        super().initial(request, *args, **kwargs)


class PromptImportApi(UploadApi):
    permission_classes = [perm("annotation.add_prompt")]

    @extend_schema(request=ImportIn, responses=ImportReportOut, summary="Import prompts (JSONL or CSV)")
    def post(self, request, slug: str):
        campaign = _campaign(slug, request.user)
        data = ImportIn(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        report = services.prompts_import(
            campaign=campaign,
            lines=uploaded_lines(upload),
            fmt=prompt_file_format(upload.name),
            strict=data.validated_data["strict"],
        )
        return _report_response(report)


class PreferenceImportApi(UploadApi):
    permission_classes = [perm("annotation.add_preference")]

    @extend_schema(request=PreferenceImportIn, responses=ImportReportOut, summary="Import preferences (TRL or HH JSONL)")
    def post(self, request, slug: str):
        campaign = _campaign(slug, request.user)
        data = PreferenceImportIn(data=request.data)
        data.is_valid(raise_exception=True)
        report = services.preferences_import(
            campaign=campaign,
            lines=uploaded_lines(data.validated_data["file"]),
            fmt=data.validated_data["format"],
            strict=data.validated_data["strict"],
        )
        return _report_response(report)


def _report_response(report: ImportReport) -> Response:
    if not report.written:  # strict with bad lines: nothing written, say why
        raise ImportRejected(f"{report.error_count} bad line(s); nothing was imported.", details=report.as_dict())
    return Response(report.as_dict(), status=status.HTTP_201_CREATED if report.created else status.HTTP_200_OK)

