"""Chat completions from a loaded causal LM, in the shape of OpenAI's ``/v1/chat/completions``
choices and usage. No Django: the model worker calls ``chat`` (``workers.serving``), the web
side only validates and relays.

- ``temperature == 0``: greedy decoding (every one of the ``n`` choices the same);
  ``temperature > 0``: the batched sampler (``training.sampling.generate``: exact temperature +
  top-p, seeded, ``n`` samples sharing one prefill).
- ``logprobs``: each generated token's log-probability under the model's own distribution
  (temperature 1, no top-p: what OpenAI reports and what the judges read), with the
  ``top_logprobs`` most likely alternatives at that position, from one forward pass over
  prompt + completion.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20  # OpenAI's own limit


class PromptTooLong(ValueError):
    """The chat's prompt has more tokens than the server takes."""


@dataclass(frozen=True)
class ChatParams:
    """What a request may set; validated (``ValueError`` with the parameter's name)."""

    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0  # OpenAI's default; 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self):
        def number(name, lo, hi):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}]")

        def integer(name, lo, hi):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}]")

        number("temperature", 0, 2)
        number("top_p", 0, 1)
        if self.top_p <= 0:
            raise ValueError("top_p must be in (0, 1]")
        integer("n", 1, 16)
        integer("max_tokens", 1, 4096)
        integer("top_logprobs", 0, MAX_TOP_LOGPROBS)
        if self.seed is not None:
            integer("seed", -(2 ** 63), 2 ** 63 - 1)
        if not isinstance(self.logprobs, bool):
            raise ValueError("logprobs must be true or false")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")


@dataclass
class ChatChoice:
    text: str
    token_ids: list[int]  # generated, the EOS included when produced
    finish_reason: str  # "stop" | "length"
    logprobs: list[dict] | None = None  # OpenAI's logprobs.content

    def as_dict(self, index: int) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": self.text},
                "logprobs": {"content": self.logprobs} if self.logprobs is not None else None,
                "finish_reason": self.finish_reason}


@dataclass
class ChatResult:
    choices: list[ChatChoice]
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self):
        self.completion_tokens = sum(len(c.token_ids) for c in self.choices)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def token_logprobs(model, tokenizer, prompt_ids: list[int], token_ids: list[int], *, top: int = 0) -> list[dict]:
    """OpenAI's ``logprobs.content`` for ``token_ids`` generated after ``prompt_ids``: each
    token's log-probability under the model (temperature 1) and the ``top`` most likely tokens
    at its position, from one forward pass."""
    import torch

    if not token_ids:
        return []
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + token_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=len(token_ids) + 1).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)  # (T, V): position t predicts token_ids[t]
    chosen = logp.gather(-1, torch.tensor(token_ids, device=device)[:, None]).squeeze(-1).tolist()
    tops = logp.topk(top, dim=-1) if top else None
    out = []
    for t, (token_id, lp) in enumerate(zip(token_ids, chosen)):
        entry = _token_entry(tokenizer, token_id, lp)
        entry["top_logprobs"] = ([_token_entry(tokenizer, i, v) for i, v in zip(tops.indices[t].tolist(), tops.values[t].tolist())]
                                 if tops is not None else [])
        out.append(entry)
    return out


def _greedy(model, tokenizer, prompt_ids: list[int], max_tokens: int) -> list[int]:
    import torch

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.tensor([prompt_ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    tokens = out[0, len(prompt_ids):].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def chat(model, tokenizer, messages: list[dict], params: ChatParams, *, max_prompt_tokens: int = 4096) -> ChatResult:
    """``params.n`` completions of ``messages`` (validated message list); ``PromptTooLong`` when
    the prompt is longer than ``max_prompt_tokens``."""
    from training.data import prompt_tokens
    from training.sampling import SamplingParams, generate

    prompt_ids = prompt_tokens(tokenizer, messages)
    if len(prompt_ids) > max_prompt_tokens:
        raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens; this server takes at most {max_prompt_tokens}")
    eos = tokenizer.eos_token_id
    if params.temperature == 0:
        tokens = _greedy(model, tokenizer, prompt_ids, params.max_tokens)
        drawn = [tokens] * params.n
    else:
        sampling = SamplingParams(temperature=float(params.temperature), top_p=float(params.top_p),
                                  max_new_tokens=params.max_tokens, batch_size=max(params.n, 1))
        seed = params.seed % 2 ** 63 if params.seed is not None else secrets.randbits(63)
        drawn = [s.token_ids for s in generate(model, tokenizer, [messages], k=params.n, params=sampling, seed=seed)[0]]
    choices = []
    for tokens in drawn:
        stopped = bool(tokens) and tokens[-1] == eos
        text = tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True).strip()
        lp = token_logprobs(model, tokenizer, prompt_ids, tokens, top=params.top_logprobs) if params.logprobs else None
        choices.append(ChatChoice(text=text, token_ids=list(tokens), finish_reason="stop" if stopped else "length", logprobs=lp))
    return ChatResult(choices=choices, prompt_tokens=len(prompt_ids))
