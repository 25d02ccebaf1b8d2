"""Preference and SFT rows -> token ids with the model's chat template, masks and truncation.

A tokenised sequence is ``prompt_ids + response_ids``; the loss covers the response only
(labels of prompt tokens are -100). The response is the assistant turn as the chat template
renders it, up to and including its end-of-turn token, which is the tokenizer's EOS: exactly
one EOS per response, and no double BOS. Truncation keeps the END of the prompt (the question
closest to the answer) and the START of the response; a row whose response would keep fewer
than ``min_response_tokens`` tokens is dropped and counted, never cut to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from training.formats import FormatError, PreferenceRecord, hh_preference, json_rows, numbered_lines, trl_preference

IGNORE = -100


@dataclass
class Report:
    """What happened to the input rows; the trainer logs it and stores it with the run."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0  # kept, but the prompt and/or a response was cut
    dropped_too_long: int = 0  # the prompt alone leaves no room for the response
    errors: list[str] = field(default_factory=list)  # "line N: reason" for unreadable rows

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated,
                "dropped_too_long": self.dropped_too_long, "errors": self.errors[:20], "n_errors": len(self.errors)}


@dataclass(frozen=True)
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]  # response tokens only
    rejected_ids: list[int]


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: list[int]
    response_ids: list[int]


def _ids(out) -> list[int]:
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def prompt_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """The chat-templated prompt ending with the assistant generation header."""
    ids = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    bos = tokenizer.bos_token_id
    # A template that writes BOS as text, tokenised by a tokenizer that also adds one: keep one.
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def response_tokens(tokenizer, messages: list[dict], prompt_ids: list[int], text: str) -> list[int]:
    """The assistant turn ``text`` after ``messages`` as the template renders it, ending with
    exactly one EOS (anything the template writes after the EOS, e.g. a newline, is not part of
    the response; a template that writes no EOS gets one appended)."""
    eos = tokenizer.eos_token_id
    full = _ids(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=True))
    if full[: len(prompt_ids)] == prompt_ids:
        body = full[len(prompt_ids):]
        if eos in body:
            body = body[: len(body) - body[::-1].index(eos)]  # up to the last EOS (the end of turn)
    else:  # a template whose prompt is not a prefix of prompt + answer: tokenise the text itself
        body = _ids(tokenizer(text, add_special_tokens=False))
    body = [t for t in body[:-1] if t != eos] + body[-1:] if body else []
    if not body or body[-1] != eos:
        body = body + [eos]
    return body


def _fit(prompt: list[int], responses: list[list[int]], *, max_length: int, max_prompt_length: int,
         min_response_tokens: int) -> tuple[list[int], list[list[int]], bool] | None:
    """Cut the prompt from the left to ``max_prompt_length``, then each response from the right
    so that prompt + response <= ``max_length``. None when a response cannot keep
    ``min_response_tokens`` tokens."""
    cut = False
    if len(prompt) > max_prompt_length:
        prompt, cut = prompt[-max_prompt_length:], True
    room = max_length - len(prompt)
    # Every response must keep min_response_tokens (or all of itself, when shorter).
    if any(room < min(min_response_tokens, len(r)) for r in responses):
        return None
    out = []
    for r in responses:
        if len(r) > room:
            r, cut = r[:room], True
        out.append(r)
    return prompt, out, cut


def tokenize_preferences(
    tokenizer, records: Iterable[PreferenceRecord], *, max_length: int = 512, max_prompt_length: int = 256,
    min_response_tokens: int = 8, report: Report | None = None,
) -> tuple[list[PreferenceExample], Report]:
    report = report or Report()
    out = []
    for rec in records:
        report.rows += 1
        p = prompt_tokens(tokenizer, rec.prompt)
        c = response_tokens(tokenizer, rec.prompt, p, rec.chosen)
        r = response_tokens(tokenizer, rec.prompt, p, rec.rejected)
        fitted = _fit(p, [c, r], max_length=max_length, max_prompt_length=max_prompt_length, min_response_tokens=min_response_tokens)
        if fitted is None:
            report.dropped_too_long += 1
            continue
        p, (c, r), cut = fitted
        report.truncated += cut
        report.kept += 1
        out.append(PreferenceExample(p, c, r))
    return out, report


def tokenize_sft(
    tokenizer, rows: Iterable[tuple[list[dict], str]], *, max_length: int = 512, max_prompt_length: int = 256,
    min_response_tokens: int = 8, report: Report | None = None,
) -> tuple[list[SFTExample], Report]:
    """SFT rows are (prompt messages, response text)."""
    report = report or Report()
    out = []
    for messages, text in rows:
        report.rows += 1
        p = prompt_tokens(tokenizer, messages)
        fitted = _fit(p, [response_tokens(tokenizer, messages, p, text)], max_length=max_length,
                      max_prompt_length=max_prompt_length, min_response_tokens=min_response_tokens)
        if fitted is None:
            report.dropped_too_long += 1
            continue
        p, (resp,), cut = fitted
        report.truncated += cut
        report.kept += 1
        out.append(SFTExample(p, resp))
    return out, report


def _read_jsonl(path: str | Path, report: Report, convert) -> list:
    """``convert(row)`` for every JSON line of ``path``; a line that cannot be read or converted
    is reported ("line N: reason") and skipped, not fatal."""
    good, bad = json_rows(numbered_lines(Path(path).read_bytes()), convert)
    report.errors.extend(f"line {number}: {reason}" for number, reason in bad)
    return [row for _, row in good]


def _preference(row: dict) -> PreferenceRecord:
    is_hh = "prompt" not in row and isinstance(row.get("chosen"), str)
    return hh_preference(row) if is_hh else trl_preference(row)


def _sft_row(row: dict) -> tuple[list[dict], str]:
    from training.formats import prompt_from_row, validate_messages

    if "chosen" in row:
        rec = _preference(row)
        return rec.prompt, rec.chosen
    if "messages" in row:
        msgs = validate_messages(row["messages"])
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise FormatError("messages must end with an assistant turn after a prompt")
        return msgs[:-1], msgs[-1]["content"]
    completion = row.get("completion", row.get("response"))
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict):
        completion = completion[0].get("content")
    if not isinstance(completion, str) or not completion:
        raise FormatError("missing 'completion' (a string or one assistant turn)")
    return prompt_from_row({"prompt": row.get("prompt")}), completion


def read_preferences(path: str | Path, report: Report | None = None) -> tuple[list[PreferenceRecord], Report]:
    """Preference rows from JSONL: TRL format (the platform's export) or Anthropic HH
    (whole ``chosen`` / ``rejected`` dialogues). Unreadable lines are reported, not fatal."""
    report = report or Report()
    return _read_jsonl(path, report, _preference), report


def read_sft(path: str | Path, report: Report | None = None) -> tuple[list[tuple[list[dict], str]], Report]:
    """SFT rows from JSONL: ``{"prompt", "completion"}`` / ``{"prompt", "response"}`` (prompt a
    string or message list, completion a string or one assistant turn), ``{"messages": [...]}``
    ending with an assistant turn, or preference rows (their chosen response is used)."""
    report = report or Report()
    return _read_jsonl(path, report, _sft_row), report


def _prompt_row(row: dict) -> list[dict]:
    """A prompt for online RL: ``{"prompt"}`` / ``{"messages"}`` (a trailing assistant turn
    dropped), or a preference row's prompt."""
    from training.formats import prompt_from_row

    if "chosen" in row:
        return _preference(row).prompt
    if isinstance(row.get("messages"), list) and row["messages"] and isinstance(row["messages"][-1], dict) \
            and row["messages"][-1].get("role") == "assistant":
        row = {"messages": row["messages"][:-1]}
    return prompt_from_row({k: v for k, v in row.items() if k in ("prompt", "messages")})


def read_prompts(path: str | Path, report: Report | None = None) -> tuple[list[list[dict]], Report]:
    """Prompts (message lists) from JSONL for PPO / RLOO / GRPO: prompt rows, chat rows or
    preference rows (their prompt), each distinct prompt once."""
    report = report or Report()
    rows = _read_jsonl(path, report, _prompt_row)
    unique = list({json.dumps(r, sort_keys=True): r for r in rows}.values())
    report.rows, report.kept = len(rows) + len(report.errors), len(unique)
    return unique, report


def split_rows(rows: list, *, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train / eval split: a seeded permutation, the first (1 - f) for training."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(rows) * eval_fraction))
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx]


def manifest(records: list) -> dict:
    """A fingerprint of the training data (row count + sha256), stored with every checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r.__dict__ if hasattr(r, "__dict__") else r, sort_keys=True, default=str).encode())
    return {"rows": len(records), "sha256": h.hexdigest()}
