"""Preference and prompt formats: parsing, validation and the TRL export row. Torch-free.

Formats read:
- TRL preference rows (https://huggingface.co/docs/trl/dataset_formats): standard
  (``prompt``/``chosen``/``rejected`` strings), conversational (message lists, ``chosen`` and
  ``rejected`` usually one assistant turn) and implicit-prompt (no ``prompt``; ``chosen`` and
  ``rejected`` are whole conversations sharing all turns but the last).
- Anthropic HH-RLHF (Bai et al. 2022): ``chosen``/``rejected`` whole dialogues written as
  ``\\n\\nHuman: ...\\n\\nAssistant: ...``; the shared turns are the prompt, the last assistant
  turns are the responses.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TEXT_CHARS = 100_000


class FormatError(ValueError):
    """A row that cannot be read; the message is the reason shown to the user."""


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: list[dict]  # chat turns before the responses
    chosen: str
    rejected: str


def _check_text(value, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FormatError(f"{what} is empty")
    if len(value) > max_chars:
        raise FormatError(f"{what} is too long ({len(value)} characters, limit {max_chars})")
    _check_encodable(value, what)
    return value


def _check_encodable(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} contains text that is not valid Unicode (a lone surrogate escape)") from None


def validate_messages(value, *, what: str = "messages", max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[dict]:
    """Return ``value`` as a clean list of ``{role, content}`` turns or raise FormatError."""
    if not isinstance(value, list) or not value:
        raise FormatError(f"{what} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise FormatError(f"{what}[{i}] must be an object with role and content")
        extra = set(turn) - {"role", "content"}
        if extra:
            raise FormatError(f"{what}[{i}] has unknown keys: {', '.join(sorted(extra))}")
        role = turn.get("role")
        if role not in ROLES:
            raise FormatError(f"{what}[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _check_text(turn.get("content"), f"{what}[{i}].content", max_chars)})
    return out


def messages_hash(messages: list[dict]) -> str:
    """sha256 of the canonical JSON of a message list (the prompt's identity)."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_json_line(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FormatError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise FormatError("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit conversion limit
        raise FormatError(f"not readable JSON ({str(exc)[:120]})") from None
    if not isinstance(row, dict):
        raise FormatError(f"expected a JSON object, got {type(row).__name__}")
    return row


# ---------------------------------------------------------------- files -> numbered lines


@dataclass(frozen=True)
class UndecodableLine:
    """A line that cannot be read (its bytes are not UTF-8, or it is too long to hold): it stays
    in the numbered lines to be reported by number. ``lossy`` (bad bytes as U+FFFD) only keeps a
    CSV file's quoting intact; it is never imported."""

    reason: str
    lossy: str = field(default="", compare=False, repr=False)


Line = tuple[int, "str | UndecodableLine"]


def numbered_lines(data: bytes) -> list[Line]:
    """Numbered lines (from 1) of a UTF-8 text file or upload held in memory (``iter_numbered_lines``
    reads one in pieces)."""
    return list(iter_numbered_lines([data]))


def iter_numbered_lines(chunks: Iterable[bytes], *, max_line_bytes: int | None = None) -> Iterator[Line]:
    """Numbered lines (from 1) of a UTF-8 text file given as consecutive pieces of bytes, cut
    anywhere, one line at a time: memory holds one piece and one line, never the file. Each line
    is decoded on its own, so one bad line is reported by number while the others are still read.
    Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (old Mac files), never at U+2028 and friends,
    which may sit inside JSON strings (``str.splitlines`` would cut there); a byte order mark at
    the start of the file is dropped. A line over ``max_line_bytes`` is not kept: it comes out as
    an ``UndecodableLine`` saying so, and reading goes on at the next line."""
    number = 0
    pending: list[bytes] = []  # the pieces of the line not yet ended
    pending_bytes = 0
    too_long = False
    after_cr = False  # the last piece ended with \r: a \n starting the next one ends no other line
    for chunk in chunks:
        if after_cr and chunk[:1] == b"\n":
            chunk, after_cr = chunk[1:], False
        if not chunk:
            continue
        after_cr = chunk[-1:] == b"\r"
        # A raw CR cannot be inside a JSON string, so it only ever ends a line.
        parts = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for part in parts[:-1]:
            number += 1
            yield _line(number, pending + [part], too_long, max_line_bytes)
            pending, pending_bytes, too_long = [], 0, False
        if not too_long:
            pending.append(parts[-1])
            pending_bytes += len(parts[-1])
            if max_line_bytes is not None and pending_bytes > max_line_bytes:
                pending, pending_bytes, too_long = [], 0, True
    yield _line(number + 1, pending, too_long, max_line_bytes)


def _line(number: int, pieces: list[bytes], too_long: bool, max_line_bytes: int | None) -> Line:
    raw = b"".join(pieces)
    if too_long or (max_line_bytes is not None and len(raw) > max_line_bytes):
        return number, UndecodableLine(f"line is too long (over {max_line_bytes} bytes)")
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return number, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start + 1} of the line is 0x{raw[exc.start]:02x})"
        return number, UndecodableLine(reason, raw.decode("utf-8", errors="replace"))


def check_storable(value, where: str = "row") -> None:
    """Refuse text a database cannot store, in any string of a parsed row, keys included: a NUL
    character (U+0000; PostgreSQL refuses it in text and jsonb and fails the whole import) or a
    lone surrogate (not Unicode; no UTF-8 encoding exists). The line is reported rather than the
    text changed: an imported text must stay what the file says (its hash is its identity)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise FormatError(f"{where} contains a NUL character (U+0000), which the database cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"{where} contains text that is not valid Unicode (a lone surrogate escape)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, f"{where} key")  # checked first, so naming it below is safe
            check_storable(item, key if where == "row" else f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_storable(item, f"{where}[{i}]")


def json_row(line: str, *, max_line_chars: int) -> dict:
    """One JSON-lines row, checked for size and for text the database refuses."""
    if len(line) > max_line_chars:
        raise FormatError(f"line is too long ({len(line)} characters, limit {max_line_chars})")
    if "\x00" in line:  # a raw NUL byte: invalid JSON too, but this says what is wrong
        raise FormatError("the line contains a NUL character (U+0000), which the database cannot store")
    row = parse_json_line(line)
    if "\\u" in line:  # only a \u escape can put a NUL or a lone surrogate into a parsed string
        try:
            check_storable(row)
        except RecursionError:  # as deep as the JSON parser allows, from a deeper call stack
            raise FormatError("JSON nested too deeply") from None
    return row


def iter_json_rows(lines: Iterable[Line], convert, *, max_line_chars: int = 10 * DEFAULT_MAX_TEXT_CHARS):
    """For each non-blank line, one at a time: (number, ``convert(row)``, None) when it is good,
    (number, None, reason) when it is not: unreadable bytes, bad JSON, or a row ``convert``
    refuses with FormatError."""
    for number, line in lines:
        if isinstance(line, UndecodableLine):
            yield number, None, line.reason
            continue
        if not line.strip():
            continue
        try:
            value = convert(json_row(line, max_line_chars=max_line_chars))
        except FormatError as exc:
            yield number, None, str(exc)
            continue
        yield number, value, None


def json_rows(lines: Iterable[Line], convert, *, max_line_chars: int = 10 * DEFAULT_MAX_TEXT_CHARS):
    """(number, ``convert(row)``) for each good non-blank line, and (number, reason) for each
    bad one (``iter_json_rows``, as two lists)."""
    good, bad = [], []
    for number, value, reason in iter_json_rows(lines, convert, max_line_chars=max_line_chars):
        if reason is None:
            good.append((number, value))
        else:
            bad.append((number, reason))
    return good, bad


def prompt_from_row(row: dict, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[dict]:
    """A prompt import row: ``prompt`` (text of one user turn) or ``messages`` (chat turns)."""
    if "messages" in row and "prompt" in row:
        raise FormatError("give either 'prompt' or 'messages', not both")
    if "messages" in row:
        messages = validate_messages(row["messages"], max_chars=max_chars)
    elif "prompt" in row:
        messages = [{"role": "user", "content": _check_text(row["prompt"], "prompt", max_chars)}]
    else:
        raise FormatError("missing 'prompt' (text) or 'messages' (list of turns)")
    if messages[-1]["role"] == "assistant":
        raise FormatError("the last turn of a prompt must not be an assistant turn")
    return messages


def _split_last_assistant(messages: list[dict], what: str) -> tuple[list[dict], str]:
    if messages[-1]["role"] != "assistant":
        raise FormatError(f"{what} must end with an assistant turn")
    if len(messages) < 2:
        raise FormatError(f"{what} has no prompt turns before the assistant turn")
    return messages[:-1], messages[-1]["content"]


def _first_difference(a: list[dict], b: list[dict]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _shared_prompt(chosen: list[dict], rejected: list[dict]) -> PreferenceRecord:
    prompt_c, text_c = _split_last_assistant(chosen, "chosen")
    prompt_r, text_r = _split_last_assistant(rejected, "rejected")
    if prompt_c != prompt_r:
        turn = _first_difference(prompt_c, prompt_r)
        raise FormatError(
            f"chosen and rejected do not share the prompt: they differ at turn {turn + 1} "
            f"({len(prompt_c)} vs {len(prompt_r)} prompt turns)"
        )
    return _record(prompt_c, text_c, text_r)


def _record(prompt: list[dict], chosen: str, rejected: str) -> PreferenceRecord:
    if prompt[-1]["role"] == "assistant":
        raise FormatError("the last prompt turn must not be an assistant turn")
    if chosen == rejected:
        raise FormatError("chosen and rejected responses are identical")
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected)


def trl_preference(row: dict, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> PreferenceRecord:
    """Read one TRL preference row (standard, conversational or implicit-prompt)."""
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise FormatError(f"missing key(s): {', '.join(missing)}")
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" not in row:  # implicit prompt: whole conversations
        return _shared_prompt(
            validate_messages(chosen, what="chosen", max_chars=max_chars),
            validate_messages(rejected, what="rejected", max_chars=max_chars),
        )
    prompt = row["prompt"]
    if not isinstance(prompt, (str, list)):
        raise FormatError(f"prompt must be a string or a list of {{role, content}} turns, got {type(prompt).__name__}")
    if isinstance(prompt, str):
        prompt_msgs = [{"role": "user", "content": _check_text(prompt, "prompt", max_chars)}]
    else:
        prompt_msgs = validate_messages(prompt, what="prompt", max_chars=max_chars)

    def response(value, what):
        if isinstance(value, str):
            return _check_text(value, what, max_chars)
        msgs = validate_messages(value, what=what, max_chars=max_chars)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise FormatError(f"{what} must be one assistant turn when a prompt is given")
        return msgs[0]["content"]

    return _record(prompt_msgs, response(chosen, "chosen"), response(rejected, "rejected"))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text, *, what: str = "dialogue", max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[dict]:
    """``\\n\\nHuman: q\\n\\nAssistant: a ...`` -> chat turns."""
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise FormatError(f"{what} is too long ({len(text)} characters, limit {max_chars})")
    _check_encodable(text, what)
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise FormatError(f"{what} must start with '\\n\\nHuman:'")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        turns.append({"role": role, "content": content.strip()})
    if not turns:
        raise FormatError(f"{what} has no Human/Assistant turns")
    if turns[0]["role"] != "user":
        raise FormatError(f"{what} must start with a Human turn")
    # Real HH data has empty turns and two assistant turns in a row; both are kept as written.
    return turns


def hh_preference(row: dict, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> PreferenceRecord:
    """Read one Anthropic HH row: two whole dialogues sharing all but the last assistant turn."""
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise FormatError(f"missing key(s): {', '.join(missing)}")
    return _shared_prompt(
        parse_hh_dialogue(row["chosen"], what="chosen", max_chars=max_chars),
        parse_hh_dialogue(row["rejected"], what="rejected", max_chars=max_chars),
    )


PREFERENCE_READERS = {"trl": trl_preference, "hh": hh_preference}


def kto_row(prompt: list[dict], completion: str, label: bool, meta: dict | None = None) -> dict:
    """A conversational TRL unpaired-preference row (KTOTrainer's ``prompt`` / ``completion`` /
    ``label``: True desirable, False undesirable)."""
    row = {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}], "label": label}
    if meta:
        row.update(meta)
    return row


def trl_row(prompt: list[dict], chosen: str, rejected: str, meta: dict | None = None) -> dict:
    """A conversational TRL preference row, as DPOTrainer and ``datasets`` read it."""
    row = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
    if meta:
        row.update(meta)
    return row
