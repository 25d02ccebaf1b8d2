"""AI judges: a verdict on a pair of responses to one prompt, like an annotator's vote. No Django.

Three kinds, one ``Verdict`` shape (in A/B terms, A being the comparison's ``response_a``):

- ``LocalJudge``: any causal LM (the embedded model by default). The judge prompt
  (``judge_messages``) carries the campaign's guideline, the conversation and both responses,
  and asks for one letter: A, B, or C for a tie. The verdict is read from the probabilities of
  those three tokens at the answer position (no sampling, no parsing), renormalised over the
  three. Each pair is judged **in both orders** (A first, then B first) and the two
  distributions are averaged after mapping the second back to A/B terms, so a preference for
  whichever text comes first cancels out; the two orders' own verdicts are kept, and a pair
  whose orders disagree is marked ``consistent=False`` (Zheng et al. 2023, "Judging LLM-as-a-
  Judge": position bias, swap both orders). Batched: all prompts of a batch in one forward.
- ``OpenAIJudge``: any OpenAI-compatible chat-completions endpoint (base URL, model, API key
  from the environment): the same prompt, both orders; the letter from ``top_logprobs`` when the
  server returns them, else from the text; timeouts, retries with exponential backoff, at most
  ``concurrency`` requests at once; latency and token usage kept per verdict.
- ``RewardJudge``: a trained reward model: P(A ≻ B) = σ(r_A − r_B), order-free.

``combine`` is the one rule turning per-order probabilities into a verdict.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

CHOICES = ("a", "b", "tie")
_LEADING_LETTER = re.compile(r"\s*[(\[\"'*]*([ABCabc])(?![A-Za-z])")  # "B", "(a)", "c, a tie"
_ANSWER_LETTER = re.compile(r"\b(?:answer|verdict)\s*(?:is)?\s*[:\-]?\s*[(\[\"'*]*([ABC])(?![A-Za-z])", re.IGNORECASE)
LETTERS = ("A", "B", "C")  # C: a tie
DEFAULT_GUIDELINE = "Prefer the response that is more helpful, honest and harmless."
MAX_RESPONSE_CHARS = 4000  # each response's text in the judge prompt is cut to this (the prompt stays bounded)

JUDGE_SYSTEM = (
    "You are an impartial judge comparing two AI assistant responses to the same conversation. "
    "Follow the guideline. Do not let the order of the responses, their length or the assistants' names "
    "influence you. Answer with a single letter: A if Response A is better, B if Response B is better, "
    "C if they are equally good."
)


@dataclass(frozen=True)
class Pair:
    """What a judge sees: the conversation so far and the two responses (A, B)."""

    prompt: list[dict]
    a: str
    b: str


@dataclass
class Verdict:
    choice: str  # "a" | "b" | "tie", after both orders are combined
    p_a: float  # P(A better), P(B better), P(tie): the combined distribution
    p_b: float
    p_tie: float
    consistent: bool  # both orders gave the same verdict (always True for an order-free judge)
    order_choices: tuple[str, ...] = ()  # each order's own verdict, in A/B terms: (A first, B first)
    latency_s: float | None = None  # remote judges: wall seconds of the requests
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + " [...]"


def _conversation(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in messages)


def judge_messages(pair: Pair, guideline: str = DEFAULT_GUIDELINE, *, swap: bool = False) -> list[dict]:
    """The chat a judge answers: system rules, then the guideline, the conversation and the two
    responses (``swap``: B's text shown as Response A and A's as Response B)."""
    first, second = (pair.b, pair.a) if swap else (pair.a, pair.b)
    user = (
        f"Guideline:\n{guideline.strip() or DEFAULT_GUIDELINE}\n\n"
        f"Conversation:\n{_conversation(pair.prompt)}\n\n"
        f"[Response A]\n{_shorten(first)}\n[End of Response A]\n\n"
        f"[Response B]\n{_shorten(second)}\n[End of Response B]\n\n"
        "Which response is better? Answer A, B or C (a tie) with one letter."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def _unswap(p: Sequence[float]) -> tuple[float, float, float]:
    """Probabilities over (shown A, shown B, tie) of the swapped order, in A/B terms."""
    return p[1], p[0], p[2]


def _argmax_choice(p: Sequence[float]) -> str:
    return CHOICES[max(range(3), key=lambda i: p[i])]


def combine(first: Sequence[float], second: Sequence[float] | None = None) -> tuple[str, tuple[float, float, float], bool, tuple[str, ...]]:
    """(choice, combined (p_a, p_b, p_tie), consistent, per-order choices) from one order's
    probabilities over (a, b, tie), or two orders' (the second already in A/B terms): the mean
    of the two, the verdict its argmax; consistent when both orders' argmaxes agree."""
    if second is None:
        p = tuple(float(x) for x in first)
        return _argmax_choice(p), p, True, (_argmax_choice(p),)
    p = tuple((float(x) + float(y)) / 2 for x, y in zip(first, second))
    own = (_argmax_choice(first), _argmax_choice(second))
    return _argmax_choice(p), p, own[0] == own[1], own


def _verdict(first, second=None, **extra) -> Verdict:
    choice, p, consistent, own = combine(first, second)
    return Verdict(choice=choice, p_a=p[0], p_b=p[1], p_tie=p[2], consistent=consistent, order_choices=own, **extra)


# ---------------------------------------------------------------- local


def letter_token_ids(tokenizer) -> list[int]:
    """The token id of each answer letter as the assistant's first token ("A", "B", "C")."""
    ids = []
    for letter in LETTERS:
        tokens = tokenizer.encode(letter, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"the judge's tokenizer splits the answer letter {letter!r} into {len(tokens)} tokens")
        ids.append(tokens[0])
    return ids


class LocalJudge:
    """A causal LM as judge (see the module docstring). ``model``/``tokenizer`` as loaded by
    ``training.models.load_policy``; ``both_orders=False`` judges the shown order only (for
    measuring what the swap buys)."""

    def __init__(self, model, tokenizer, *, guideline: str = DEFAULT_GUIDELINE, batch_size: int = 8, both_orders: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.guideline, self.batch_size, self.both_orders = guideline, batch_size, both_orders
        self.letters = letter_token_ids(tokenizer)

    def letter_probs(self, chats: list[list[dict]]) -> list[tuple[float, float, float]]:
        """P(A), P(B), P(C) of the answer's first token for each chat, renormalised over the three."""
        import torch

        from training.data import prompt_tokens

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        out: list[tuple[float, float, float]] = []
        for start in range(0, len(chats), self.batch_size):
            seqs = [prompt_tokens(self.tokenizer, chat) for chat in chats[start:start + self.batch_size]]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):  # left padding: the answer position is the last column
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, width - len(s):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                                    logits_to_keep=1).logits[:, -1].float()
            probs = torch.softmax(logits[:, self.letters], dim=-1)  # the three letters' share, renormalised
            out.extend(tuple(row) for row in probs.tolist())
        return out

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        chats = [judge_messages(p, self.guideline) for p in pairs]
        if self.both_orders:
            chats += [judge_messages(p, self.guideline, swap=True) for p in pairs]
        probs = self.letter_probs(chats)
        n = len(pairs)
        if not self.both_orders:
            return [_verdict(probs[i]) for i in range(n)]
        return [_verdict(probs[i], _unswap(probs[n + i])) for i in range(n)]


# ---------------------------------------------------------------- reward model


class RewardJudge:
    """A trained reward model as judge: P(A ≻ B) = σ(r_A − r_B); a tie never (order-free,
    always consistent)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        from training.reward import score

        rewards = score(self.model, self.tokenizer, [(p.prompt, t) for p in pairs for t in (p.a, p.b)], batch_size=self.batch_size)
        out = []
        for i in range(len(pairs)):
            p_a = 1.0 / (1.0 + math.exp(-(rewards[2 * i] - rewards[2 * i + 1])))
            out.append(_verdict((p_a, 1.0 - p_a, 0.0)))
        return out


# ---------------------------------------------------------------- OpenAI-compatible endpoint


class JudgeError(Exception):
    """A remote judge could not give a verdict (after its retries); the message says why."""


def letter_from_completion(body: dict) -> tuple[tuple[float, float, float], str]:
    """(P(A), P(B), P(C)) and the answer text from a chat-completions response body: from the
    first token's ``top_logprobs`` when present (renormalised over the letters found), else one
    for the letter the text starts with ("B", "(a)") or states ("Answer: C"). JudgeError when
    neither says ("I cannot decide" is no C)."""
    choice = (body.get("choices") or [{}])[0]
    text = ((choice.get("message") or {}).get("content") or "").strip()
    content = ((choice.get("logprobs") or {}).get("content") or [])
    if content:
        tops = content[0].get("top_logprobs") or [{"token": content[0].get("token"), "logprob": content[0].get("logprob")}]
        mass = {letter: 0.0 for letter in LETTERS}
        for top in tops:
            token = str(top.get("token") or "").strip().upper()
            if token in mass and top.get("logprob") is not None:
                mass[token] += math.exp(float(top["logprob"]))
        total = sum(mass.values())
        if total > 0:
            return tuple(mass[letter] / total for letter in LETTERS), text  # type: ignore[return-value]
    found = _LEADING_LETTER.match(text) or _ANSWER_LETTER.search(text)
    if found:
        ch = found.group(1).upper()
        return tuple(1.0 if letter == ch else 0.0 for letter in LETTERS), text  # type: ignore[return-value]
    raise JudgeError(f"no verdict letter in the judge's answer {text[:80]!r}")


class OpenAIJudge:
    """A judge behind any OpenAI-compatible ``/chat/completions`` endpoint (see the module
    docstring). ``api_key_env``: the environment variable holding the key (none sent when
    unset). ``post``: the HTTP call, ``(url, json, headers, timeout) -> (status, body)``; the
    default uses httpx."""

    def __init__(self, *, base_url: str, model: str, guideline: str = DEFAULT_GUIDELINE, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, concurrency: int = 4,
                 post: Callable | None = None, sleep: Callable[[float], None] = time.sleep, both_orders: bool = True):
        if retries < 0 or concurrency < 1 or timeout <= 0:
            raise ValueError("retries must be >= 0, concurrency >= 1 and timeout > 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.guideline = model, guideline
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout, self.retries, self.backoff, self.concurrency = timeout, retries, backoff, concurrency
        self.post, self.sleep = post or _httpx_post, sleep
        self.both_orders = both_orders

    def ask(self, messages: list[dict]) -> tuple[tuple[float, float, float], float, dict]:
        """One order: (letter probabilities, seconds, usage), with retries on timeouts,
        connection errors, 429 and 5xx (exponential backoff); other errors at once."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0,
                   "logprobs": True, "top_logprobs": 20}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            t0 = time.monotonic()
            try:
                status, body = self.post(self.url, payload, headers, self.timeout)
            except Exception as exc:  # timeouts and connection errors: retried
                last = f"{type(exc).__name__}: {exc}"
                continue
            if status == 200 and isinstance(body, dict):
                probs, _ = letter_from_completion(body)
                return probs, time.monotonic() - t0, body.get("usage") or {}
            last = f"HTTP {status}: {str(body)[:200]}"
            if status != 429 and status < 500:
                break
        raise JudgeError(f"{self.url}: {last}")

    def _one(self, pair: Pair) -> Verdict:
        seconds, usage_in, usage_out = 0.0, 0, 0
        orders = []
        for swap in ((False, True) if self.both_orders else (False,)):
            try:
                probs, dt, usage = self.ask(judge_messages(pair, self.guideline, swap=swap))
            except JudgeError as exc:
                return Verdict(choice="", p_a=math.nan, p_b=math.nan, p_tie=math.nan, consistent=False, errors=[str(exc)])
            orders.append(_unswap(probs) if swap else probs)
            seconds += dt
            usage_in += int(usage.get("prompt_tokens") or 0)
            usage_out += int(usage.get("completion_tokens") or 0)
        return _verdict(*orders, latency_s=seconds, prompt_tokens=usage_in, completion_tokens=usage_out)

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        """Both orders of each pair; at most ``concurrency`` pairs in flight. A pair that failed
        after its retries has ``choice == ""`` and its errors."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, pairs))


def _httpx_post(url: str, payload: dict, headers: dict, timeout: float) -> tuple[int, dict | str]:
    import httpx

    r = httpx.post(url, json=payload, headers=headers, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text
