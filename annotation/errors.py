"""One error vocabulary for services, API and commands, and the one JSON shape of API errors:

    {"error": {"code": "lease_expired", "message": "...", "details": {...}}}
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
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


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def api_exception_handler(exc, context):
    """DRF exception handler: every API error, ours or the framework's, in one shape."""
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
