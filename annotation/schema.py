"""The OpenAPI schema's error responses, and the API docs page.

``error_responses`` (a drf-spectacular postprocessing hook, SPECTACULAR_SETTINGS) gives every
operation the error statuses it can answer, each with the error shape's schema (ours under
/api/, OpenAI's under /v1/), where the view did not document them itself:

- 400 where the operation takes input: a body, query or path parameters (a NUL character in
  any of them is refused before the view, annotation.middleware);
- 401 and 403 on every authenticated operation;
- 404 where the path names something (an id, a slug), or the query a campaign (``?campaign=``);
- 409 where a lease or a vote can conflict with the current state (next, vote, skip);
- 413 on the import uploads (and 411: a body sent in chunks where the server cannot end it);
- 415 where the operation takes a body (in a media type it does not read);
- 429 where the view is throttled.
"""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerSplitView

OUR_ERROR = "ErrorOut"
OPENAI_ERROR = "OpenAIErrorOut"
CONFLICT_SUFFIXES = ("/next/", "/vote/", "/skip/")
UPLOAD_SUFFIXES = ("/prompts/import/", "/preferences/import/")
WORDS = {
    400: "Invalid input (the error's details name the field)",
    401: "Not authenticated: no or bad credentials",
    403: "Not allowed (also: a session's unsafe call without its CSRF token)",
    404: "Not found (or not visible to you)",
    409: "Conflict with the current state (lease expired, comparison closed, already voted)",
    411: "Length required: send the upload with a Content-Length header",
    413: "The upload is too large",
    415: "Unsupported media type (send one of the request body's content types)",
    429: "Too many requests (see Retry-After)",
}
_SCHEMAS = {
    "ErrorBody": {
        "type": "object",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "details": {"type": "object", "additionalProperties": {}}},
        "required": ["code", "details", "message"],
    },
    OUR_ERROR: {"type": "object", "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}}, "required": ["error"]},
    OPENAI_ERROR: {
        "type": "object",
        "properties": {"error": {"type": "object", "additionalProperties": {},
                                 "description": "message, type, param, code (as OpenAI's API)"}},
        "required": ["error"],
    },
}


def expected_error_statuses(path: str, method: str, operation: dict, *, throttled: bool) -> set[int]:
    """The error statuses an operation can answer (see the module's docstring)."""
    params = {p.get("in") for p in operation.get("parameters", [])}
    statuses = {403}
    if {} not in operation.get("security", [{}]):
        statuses.add(401)
    if "requestBody" in operation or params & {"query", "path"}:
        statuses.add(400)
    if "path" in params or any(p.get("in") == "query" and p.get("name") == "campaign" for p in operation.get("parameters", [])):
        statuses.add(404)
    if method == "post" and path.endswith(CONFLICT_SUFFIXES):
        statuses.add(409)
    if "requestBody" in operation:
        statuses |= {413, 415}  # 413: a JSON or form body over DATA_UPLOAD_MAX_MEMORY_SIZE (annotation.middleware)
    if method == "post" and path.endswith(UPLOAD_SUFFIXES):
        statuses |= {411, 413}
    if throttled:
        statuses.add(429)
    return statuses


def _throttled_views(generator) -> dict[tuple[str, str], bool]:
    out = {}
    for path, _regex, method, callback in getattr(generator, "endpoints", None) or []:
        view = getattr(callback, "cls", None)
        out[path, method.lower()] = bool(view and getattr(view, "throttle_classes", None))
    return out


def error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    throttled = _throttled_views(generator)
    used = set()
    for path, operations in result.get("paths", {}).items():
        ref = OPENAI_ERROR if path.startswith("/v1/") else OUR_ERROR
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in sorted(expected_error_statuses(path, method, operation, throttled=throttled.get((path, method), False))):
                if str(status) not in responses:
                    responses[str(status)] = {
                        "description": WORDS[status],
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
                    }
                    used.add(ref)
    for name in sorted(used):
        schemas.setdefault(name, _SCHEMAS[name])
        if name == OUR_ERROR:
            schemas.setdefault("ErrorBody", _SCHEMAS["ErrorBody"])
    return result


class SwaggerView(SpectacularSwaggerSplitView):
    """Swagger UI under the Content-Security-Policy: its start-up script from a URL of its own
    (``?script``) rather than inline, its page style from a static file (no inline <style>)."""

    template_name = "annotation/swagger_ui.html"
