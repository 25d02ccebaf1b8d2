"""The model worker's side of ``POST /v1/chat/completions``: load the named policy version (kept
loaded between requests with the sampler's models), complete the chat (``training.serving``),
answer in OpenAI's shape. The web process validated the request and waits for this result; an
error a client caused comes back as ``{"error": ..., "status": 4xx}``, not as an exception."""

from __future__ import annotations

import time
import uuid

from django.conf import settings

from annotation.models import ModelVersion
from training.serving import ChatParams, PromptTooLong


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"status": status, "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def chat_complete(request: dict) -> dict:
    """``request``: the validated body (``model``, ``messages``, the ``ChatParams`` fields)."""
    from training.serving import chat
    from workers.sampling import policy_load

    version = ModelVersion.objects.filter(name=request["model"], kind=ModelVersion.Kind.POLICY).first()
    if version is None:  # deleted between the web's check and now
        return _error(404, f"The model '{request['model']}' does not exist.", param="model", code="model_not_found")
    params = ChatParams(**{k: request[k] for k in ChatParams.__dataclass_fields__ if k in request})
    model, tokenizer = policy_load(version.spec)
    try:
        result = chat(model, tokenizer, request["messages"], params, max_prompt_tokens=settings.PREFLOOP["CHAT_MAX_PROMPT_TOKENS"])
    except PromptTooLong as exc:
        return _error(400, str(exc), param="messages", code="context_length_exceeded")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": version.name,
        "system_fingerprint": f"prefloop-version-{version.pk}",
        "choices": [c.as_dict(i) for i, c in enumerate(result.choices)],
        "usage": result.usage(),
    }
