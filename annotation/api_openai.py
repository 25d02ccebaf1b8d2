"""OpenAI-compatible endpoints for Prefloop's policy versions, so a judge, the console's
playground or any OpenAI client (``base_url=<prefloop>/v1``) can talk to them:

- ``POST /v1/chat/completions``: ``model`` = a policy version's name; ``n``, ``max_tokens``
  (or ``max_completion_tokens``), ``temperature`` (0: greedy), ``top_p``, ``seed``,
  ``logprobs`` / ``top_logprobs`` (≤ 20); no streaming. A model worker answers (the ``serve``
  queue); the web process relays.
- ``GET /v1/models``: the policy versions.

Authentication: ``Authorization: Bearer <token>`` (a Django REST framework token: ``python
manage.py drf_create_token USER``, or the admin's Tokens page) or a console session; the user
needs ``annotation.view_modelversion`` (reviewers, admins). Errors in OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import services
from annotation.api import perm
from annotation.errors import ApplicationError, openai_error_body
from annotation.throttles import FailOpenScopedRateThrottle

USE_MODELS = "annotation.view_modelversion"


class BearerTokenAuthentication(TokenAuthentication):
    """DRF's token, sent the way OpenAI clients send their key."""

    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The schema's name for it: HTTP bearer (DRF's own token scheme is ``Token <key>``)."""

    target_class = "annotation.api_openai.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A Prefloop API token: python manage.py drf_create_token USER"}


def openai_error(status: int, message: str, *, param=None, code=None) -> Response:
    return Response(openai_error_body(status, message, param=param, code=code), status=status)


class OpenAIView(APIView):
    authentication_classes = [BearerTokenAuthentication, SessionAuthentication]
    permission_classes = [perm(USE_MODELS)]

    def get_authenticate_header(self, request):
        return "Bearer"  # a 401, not a 403, for a request without credentials

    def handle_exception(self, exc):
        if isinstance(exc, ApplicationError):
            return openai_error(exc.status, exc.message, param=exc.details.get("param"), code=exc.details.get("code") or exc.code)
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            return openai_error(401, str(exc.detail) + " Send 'Authorization: Bearer <token>'.", code="invalid_api_key")
        if isinstance(exc, exceptions.APIException):
            response = openai_error(exc.status_code, str(exc.detail), code=getattr(exc, "default_code", None))
            if getattr(exc, "wait", None):
                response["Retry-After"] = str(int(exc.wait) + 1)
            return response
        return super().handle_exception(exc)


class OpenAIErrorOut(serializers.Serializer):
    error = serializers.DictField(help_text="message, type, param, code (as OpenAI's API)")


class ChatIn(serializers.Serializer):
    model = serializers.CharField(help_text="A policy version's name (GET /v1/models).")
    messages = serializers.ListField(child=serializers.DictField(), help_text="[{role: system|user|assistant, content}]")
    n = serializers.IntegerField(required=False, min_value=1, max_value=16)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=4096)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2, help_text="0: greedy")
    top_p = serializers.FloatField(required=False)
    seed = serializers.IntegerField(required=False)
    logprobs = serializers.BooleanField(required=False)
    top_logprobs = serializers.IntegerField(required=False, min_value=0, max_value=20)


class ModelListOut(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = serializers.ListField(child=serializers.DictField(), help_text="id (the version name), object, created, owned_by")


class ChatOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = serializers.ListField(child=serializers.DictField(), help_text="index, message, logprobs, finish_reason")
    usage = serializers.DictField(help_text="prompt_tokens, completion_tokens, total_tokens")


def _errors(*codes: int) -> dict:
    words = {400: "Invalid request", 401: "No or bad token", 403: "Not allowed", 404: "No such model",
             429: "Too many requests (PREFLOOP_CHAT_RATE)", 502: "The model worker failed", 504: "No model worker answered in time"}
    return {code: OpenApiResponse(OpenAIErrorOut, description=words[code]) for code in codes}


class ChatCompletionsApi(OpenAIView):
    throttle_classes = [FailOpenScopedRateThrottle]  # scope "chat"
    throttle_scope = "chat"  # PREFLOOP_CHAT_RATE per user (60/min): each request costs a model worker seconds
    @extend_schema(operation_id="v1_chat_completions", request=ChatIn,
                   responses={200: ChatOut, **_errors(400, 401, 403, 404, 429, 502, 504)}, tags=["openai"])
    def post(self, request):
        status, body = services.chat_complete(request.data)
        if status != 200:
            err = body["error"]
            return openai_error(status, err.get("message", ""), param=err.get("param"), code=err.get("code"))
        return Response(body)


class ModelListApi(OpenAIView):
    @extend_schema(operation_id="v1_models", responses={200: ModelListOut, **_errors(401, 403)}, tags=["openai"])
    def get(self, request):
        return Response({"object": "list", "data": services.chat_models()})
