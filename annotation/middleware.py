"""Requests refused before any view: a NUL character (U+0000) anywhere a request carries text.

PostgreSQL text cannot hold NUL (psycopg raises DataError: a 500), and no form field, slug,
token or JSON string of Prefloop has a use for one. Checked: the path, query keys and values,
header values (credentials and cookies are looked up in the database), urlencoded form fields and
JSON bodies (``\\u0000`` escapes and raw bytes). Multipart bodies are not read here: a view may
refuse the request before its upload is parsed, and files can be large. ``NulFieldCheck`` (an
upload handler placed first) checks their non-file fields, field names and file names when the
body is parsed, by whoever parses it; file contents are the importers' business.

Answers: 400 in the API's error shape under /api/, OpenAI's under /v1/, a plain 400 page elsewhere.

Also here: ``PrefloopCSPMiddleware``, django-csp's Content-Security-Policy (settings
``CONTENT_SECURITY_POLICY``) with one route-specific relaxation.
"""

from __future__ import annotations

import re

from csp.constants import UNSAFE_INLINE
from csp.middleware import CSPMiddleware
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.multipartparser import MultiPartParser
from django.views import defaults
from rest_framework.renderers import BrowsableAPIRenderer

from annotation.errors import BadFormField, prefix_error_response

NUL = "\x00"
# A JSON \u0000 escape: "\u0000" preceded by an even number of backslashes ("\\u0000" is text).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_FORM_NUL = re.compile(rb"%00|\x00")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _first_nul_field(pairs) -> str | None:
    """The first key of ``(key, [values])`` pairs whose key or a value holds a NUL."""
    for key, values in pairs:
        if NUL in key or any(isinstance(v, str) and NUL in v for v in values):
            return key.replace(NUL, "\\x00")[:100]
    return None


def nul_problem(request: HttpRequest) -> dict | None:
    """Where the request carries a NUL (``{"where": ..., "field": ...}``), or None. Reads the body
    of JSON and urlencoded requests only (as the views would: DRF reads those whole too)."""
    if NUL in request.path_info:
        return {"where": "path"}
    query = request.META.get("QUERY_STRING", "")
    if "%00" in query or NUL in query:
        field = _first_nul_field(request.GET.lists())
        return {"where": "query", "field": field if field is not None else "?"}
    for key, value in request.META.items():
        if key.startswith("HTTP_") and isinstance(value, str) and NUL in value:
            return {"where": "header", "field": key[5:].replace("_", "-").title()}
    content_type = request.content_type or ""
    if not (_is_json(content_type) or content_type == "application/x-www-form-urlencoded"):
        return None
    try:
        body = request.body
    except RequestDataTooBig:
        return {"where": "size"}  # DRF would read it past the limit, unchecked: refuse it here
    if _is_json(content_type):
        return {"where": "body"} if NUL.encode() in body or _JSON_NUL.search(body) else None
    if not _FORM_NUL.search(body):
        return None
    field = _first_nul_field(QueryDict(body, encoding=request.encoding).lists())
    return {"where": "form", "field": field if field is not None else "?"}


def _message(problem: dict) -> str:
    where = {"path": "The URL path", "query": "The query string", "header": "A header", "body": "The JSON body",
             "form": "A form field", "multipart": "A form field"}[problem["where"]]
    field = f" ({problem['field']})" if problem.get("field") else ""
    return f"{where}{field} contains a NUL character (\\x00), which is never valid input."


class RejectNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = nul_problem(request)
        if problem is not None and problem["where"] == "size":
            message = "The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE (upload files as multipart instead)."
            response = prefix_error_response(request, status=413, code="too_large", message=message)
            return response or HttpResponse(message, status=413, content_type="text/plain")
        if problem is not None:
            message = _message(problem)
            response = prefix_error_response(request, status=400, code="invalid", message=message, details=problem)
            return response or defaults.bad_request(request, SuspiciousOperation(message))
        if (request.content_type or "").startswith("multipart/"):
            request.upload_handlers.insert(0, NulFieldCheck(request))
        return self.get_response(request)


class NulFieldCheck(FileUploadHandler):
    """Parses the multipart body with the other upload handlers (so files stream to memory or a
    temporary file as usual), then refuses a NUL in a field's value, a field's name or a file name."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        others = [h for h in self.request.upload_handlers if h is not self]
        post, files = MultiPartParser(META, input_data, others, encoding).parse()
        field = _first_nul_field(post.lists())
        if field is None:
            field = _first_nul_field((key, [getattr(f, "name", "") or "" for f in uploads]) for key, uploads in files.lists())
        if field is not None:
            for _, uploads in files.lists():
                for upload in uploads:
                    upload.close()
            problem = {"where": "multipart", "field": field}
            raise BadFormField(_message(problem), details=problem)
        return post, files

    def receive_data_chunk(self, raw_data, start):  # never called: handle_raw_input parses everything
        return raw_data

    def file_complete(self, file_size):
        return None


class PrefloopCSPMiddleware(CSPMiddleware):
    """The strict policy everywhere, except that DRF's browsable API pages (a browser opening an
    API URL) may use inline styles, which DRF's own templates carry (style="" attributes, the
    code highlighting's style element). Scripts stay 'self' there too."""

    def get_policy_parts(self, request, response, report_only=False):
        parts = super().get_policy_parts(request, response, report_only)
        if isinstance(getattr(response, "accepted_renderer", None), BrowsableAPIRenderer):
            parts.update = {**(parts.update or {}), "style-src": [UNSAFE_INLINE]}
        return parts
