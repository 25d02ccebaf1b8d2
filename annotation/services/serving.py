"""Chat completions for any policy version, OpenAI-compatible (``POST /v1/chat/completions``):
the web process validates the request, hands it to a model worker (the ``serve`` queue) and
waits for the answer through Celery's result backend; it never loads a model itself."""

from __future__ import annotations

import logging

from django.conf import settings

from annotation.errors import ApplicationError, InvalidInput, NotFound
from annotation.models import ModelVersion
from training.formats import FormatError, validate_messages
from training.serving import ChatParams

logger = logging.getLogger(__name__)

# Accepted and ignored (they change nothing about the answer), or accepted at their no-op value only.
IGNORED = {"user", "store", "metadata", "service_tier", "stream_options", "parallel_tool_calls"}
NO_OP = {"stream": (False, None), "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "stop": (None, [], ""),
         "tools": (None, []), "tool_choice": (None, "none"), "logit_bias": (None, {}), "response_format": (None, {"type": "text"})}
NO_OP_WHY = {"stream": "streaming is not supported: send stream=false"}


class WorkerTimeout(ApplicationError):
    code = "timeout"
    status = 504


class WorkerFailed(ApplicationError):
    code = "model_worker_error"
    status = 502


def _content(value, i: int):
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidInput(f"messages[{i}].content[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported.",
                                   details={"param": f"messages[{i}].content"})
            parts.append(part["text"])
        return "\n".join(parts)
    return value


def chat_request_parse(body) -> dict:
    """The validated request (``model``, ``messages``, ``ChatParams`` fields) or ``InvalidInput``
    / ``NotFound`` naming the parameter, as OpenAI's API does."""
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    known = {"model", "messages", "max_tokens", "max_completion_tokens"} | set(ChatParams.__dataclass_fields__) | IGNORED | set(NO_OP)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidInput(f"Unsupported parameter(s): {', '.join(unknown)}.", details={"param": unknown[0]})
    for name, allowed in NO_OP.items():
        if name in body and body[name] not in allowed:
            raise InvalidInput(NO_OP_WHY.get(name, f"'{name}' is not supported by this server (leave it out)."), details={"param": name})
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidInput("'model' must be the name of a policy version (GET /v1/models lists them).", details={"param": "model"})
    if not ModelVersion.objects.filter(name=name, kind=ModelVersion.Kind.POLICY).exists():
        raise NotFound(f"The model '{name}' does not exist (GET /v1/models lists the policy versions).",
                       details={"param": "model", "code": "model_not_found"})
    raw = body.get("messages")
    if isinstance(raw, list):
        raw = [{**m, "content": _content(m.get("content"), i)} if isinstance(m, dict) else m for i, m in enumerate(raw)]
        raw = [{k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m for m in raw]
    try:
        messages = validate_messages(raw, max_chars=settings.PREFLOOP["MAX_TEXT_CHARS"])
    except FormatError as exc:
        raise InvalidInput(str(exc), details={"param": "messages"}) from None
    fields = {k: body[k] for k in ChatParams.__dataclass_fields__ if body.get(k) is not None}
    if "max_tokens" not in fields and body.get("max_completion_tokens") is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    try:
        params = ChatParams(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc), details={"param": str(exc).split()[0]}) from None
    return {"model": name, "messages": messages, **{k: getattr(params, k) for k in ChatParams.__dataclass_fields__}}


def chat_complete(body) -> tuple[int, dict]:
    """(HTTP status, body) of a chat completion: the worker's answer, or its 4xx error."""
    from annotation import enqueue

    request = chat_request_parse(body)
    timeout = settings.PREFLOOP["CHAT_TIMEOUT_SECONDS"]
    result = enqueue.chat_complete(request, expires=timeout)
    try:
        answer = result.get(timeout=timeout, propagate=False)
    except Exception as exc:  # celery.exceptions.TimeoutError, or the result backend is unreachable
        try:
            result.revoke()  # not to be run later for nobody
        except Exception:  # noqa: S110 - a transport without remote control: the result just expires
            pass
        if type(exc).__name__ == "TimeoutError":
            raise WorkerTimeout(f"No model worker answered within {timeout:g} s: is a worker consuming the 'serve' queue running?") from None
        logger.exception("chat completion %s: the result backend failed", result.id)
        raise WorkerFailed("The result backend failed; the server's log says why.") from None
    if result.failed() or not isinstance(answer, dict):
        logger.error("chat completion %s: the model worker failed: %r", result.id, answer)
        raise WorkerFailed("The model worker failed on this request; the worker's log says why.")
    if "error" in answer:
        return int(answer.get("status") or 400), {"error": answer["error"]}
    return 200, answer


def chat_models() -> list[dict]:
    """OpenAI's model list: every policy version, newest first."""
    return [{"id": name, "object": "model", "created": int(created.timestamp()), "owned_by": "prefloop"}
            for name, created in ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).order_by("-created_at", "-pk")
            .values_list("name", "created_at")]
