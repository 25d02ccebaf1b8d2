"""One error vocabulary for services, API and commands, and the one JSON shape of API errors:

    {"error": {"code": "lease_expired", "message": "...", "details": {...}}}
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from django.http.multipartparser import MultiPartParserError
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApplicationError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(ApplicationError):
    code = "invalid"
    status = 400


class ImportRejected(InvalidInput):
    """A strict import with bad lines: nothing was written; ``details`` holds the import report."""

    code = "invalid_file"


class TooLarge(ApplicationError):
    """An upload over its size limit (``annotation.limits``); refused before or while it is read."""

    code = "too_large"
    status = 413


class LengthRequired(ApplicationError):
    """An upload whose end the server cannot tell (no Content-Length, chunks the server does not join)."""

    code = "length_required"
    status = 411


class NotFound(ApplicationError):
    code = "not_found"
    status = 404


class Forbidden(ApplicationError):
    code = "forbidden"
    status = 403


class Conflict(ApplicationError):
    code = "conflict"
    status = 409


class LeaseExpired(Conflict):
    code = "lease_expired"


class ComparisonClosed(Conflict):
    code = "comparison_closed"


class AlreadyVoted(Conflict):
    code = "already_voted"


class BadFormField(MultiPartParserError):
    """A multipart form field refused while the body is parsed (annotation.middleware.NulFieldCheck).
    Not an ApplicationError: a page answers it with Django's 400 page, not a flash message; DRF's
    parser wraps it in a ParseError, which ``api_exception_handler`` answers as ``invalid``."""

    def __init__(self, message: str, *, details: dict):
        super().__init__(message)
        self.message = message
        self.details = details


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "invalid_request_error", 429: "rate_limit_error"}


def openai_error_body(status: int, message: str, *, param=None, code=None) -> dict:
    """An error in OpenAI's shape (under /v1/)."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def prefix_error_response(request, *, status: int, code: str, message: str, details: dict | None = None) -> JsonResponse | None:
    """An error answered outside DRF's views (middleware, the 404 handler) in the shape its URL
    prefix speaks: ours under /api/, OpenAI's under /v1/; None elsewhere (a page: the caller
    answers with a plain page)."""
    path = request.path_info
    if path == "/api" or path.startswith("/api/"):
        return JsonResponse(error_body(code, message, details), status=status)
    if path == "/v1" or path.startswith("/v1/"):
        return JsonResponse(openai_error_body(status, message, param=(details or {}).get("field"), code=code), status=status)
    return None


def api_exception_handler(exc, context):
    """DRF exception handler: every API error, ours or the framework's, in one shape."""
    if isinstance(exc, drf_exceptions.ParseError) and isinstance(exc.__context__, BadFormField):
        return Response(error_body("invalid", exc.__context__.message, exc.__context__.details), status=400)
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: a 500, logged by Django
    if isinstance(exc, drf_exceptions.ValidationError):
        body = error_body("invalid", "The request is invalid.", {"fields": response.data})
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        body = error_body(str(code), str(detail))
    response.data = body
    return response
