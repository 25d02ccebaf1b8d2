"""Reading import files and writing export files: bytes to numbered lines, JSON lines and CSV
rows to checked values, rows to JSON lines. No Django here (only ``training.formats`` and the
standard library): limits come in as arguments, and a bad line is reported with its number
and reason instead of stopping the import.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from training.formats import FormatError, parse_json_line, prompt_from_row

T = TypeVar("T")

PROMPT_COLUMNS = ("prompt", "messages", "tags", "split", "id")
MAX_TAG_CHARS = 50


class FileError(ValueError):
    """The file as a whole cannot be read (e.g. a CSV file without its ``prompt`` column)."""


@dataclass(frozen=True)
class UndecodableLine:
    """A line whose bytes are not UTF-8: it stays in the numbered lines to be reported by number.
    ``lossy`` (bad bytes as U+FFFD) only keeps a CSV file's quoting intact; it is never imported."""

    reason: str
    lossy: str = field(default="", compare=False, repr=False)


Line = tuple[int, "str | UndecodableLine"]


@dataclass
class ImportReport:
    """What an import did: the counts, and every bad line with its number and reason."""

    lines: int = 0
    created: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    written: bool = False

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "created": self.created,
            "duplicates": self.duplicates,
            "written": self.written,
            "errors": [{"line": n, "reason": r} for n, r in self.errors],
        }


# ---------------------------------------------------------------- bytes -> numbered lines


def numbered_lines(data: bytes) -> list[Line]:
    """Numbered lines (from 1) of a UTF-8 text file or upload, each line decoded on its own so
    that one bad line is reported by number while the others are still read. Lines end at
    ``\\n`` only (U+2028 and friends may sit inside JSON strings); a trailing ``\\r`` is
    dropped, and so is a byte order mark at the start of the file."""
    out: list[Line] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            out.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 text (byte {exc.start + 1} of the line is 0x{raw[exc.start]:02x})"
            out.append((number, UndecodableLine(reason, raw.decode("utf-8", errors="replace"))))
    return out


# ---------------------------------------------------------------- checks shared by every format


def check_no_nul(value, where: str = "row") -> None:
    """Refuse a NUL character (U+0000) in any string of a parsed row, keys included.

    PostgreSQL cannot store U+0000 in text or jsonb and fails the whole import with a
    DataError. The line is reported rather than the character dropped: an imported text must
    stay exactly what the file says (its hash is its identity and its provenance)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise FormatError(f"{where} contains a NUL character (U+0000), which the database cannot store")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_no_nul(key, f"{where} key")
            check_no_nul(item, key if where == "row" else f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_no_nul(item, f"{where}[{i}]")


def json_row(line: str, *, max_line_chars: int) -> dict:
    """One JSON-lines row, checked for size and for characters the database refuses."""
    if len(line) > max_line_chars:
        raise FormatError(f"line is too long ({len(line)} characters, limit {max_line_chars})")
    if "\x00" in line:  # a raw NUL byte: invalid JSON too, but this says what is wrong
        raise FormatError("the line contains a NUL character (U+0000), which the database cannot store")
    row = parse_json_line(line)
    if "\\u0000" in line:  # the only way left for a NUL to reach a parsed string
        check_no_nul(row)
    return row


def json_lines(
    lines: Iterable[Line], report: ImportReport, parse: Callable[[dict], T], *, max_line_chars: int
) -> list[tuple[int, T]]:
    """(number, ``parse(row)``) for each good non-blank line; each bad one goes to ``report.errors``."""
    good = []
    for number, line in lines:
        if isinstance(line, UndecodableLine):
            report.lines += 1
            report.errors.append((number, line.reason))
            continue
        if not line.strip():
            continue
        report.lines += 1
        try:
            good.append((number, parse(json_row(line, max_line_chars=max_line_chars))))
        except FormatError as exc:
            report.errors.append((number, str(exc)))
    return good


# ---------------------------------------------------------------- prompt files


def prompt_file_format(filename: str) -> str:
    return "csv" if filename.lower().endswith(".csv") else "jsonl"


def prompt_row(row: dict, *, max_text_chars: int, splits: tuple[str, ...]) -> tuple[list[dict], list[str], str]:
    """A prompt import row -> (messages, tags, split); ``splits[0]`` is the default split."""
    messages = prompt_from_row({k: v for k, v in row.items() if k in ("prompt", "messages")}, max_chars=max_text_chars)
    tags = row.get("tags", [])
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG_CHARS for t in tags):
        raise FormatError("tags must be a list of short strings (or a comma-separated string)")
    split = row.get("split") or splits[0]
    if split not in splits:
        raise FormatError(f"split must be one of {', '.join(splits)}, got {split!r}")
    unknown = set(row) - set(PROMPT_COLUMNS)
    if unknown:
        raise FormatError(f"unknown column(s): {', '.join(sorted(unknown))}")
    return messages, tags, split


def csv_rows(lines: list[Line], report: ImportReport) -> list[tuple[int, dict]]:
    """Numbered rows (the number of the row's last line) of a CSV file with a ``prompt``
    column, given as numbered lines; quoted fields may span lines. An undecodable line is a
    reported bad line, and the row it belongs to is skipped; empty cells are left out."""
    undecodable = {n for n, text in lines if isinstance(text, UndecodableLine)}
    for n, text in lines:
        if n in undecodable:
            report.errors.append((n, text.reason))
    report.lines += len(undecodable)
    consumed: list[int] = []  # numbers of the lines the reader has taken for the current row

    def feed() -> Iterator[str]:
        for n, text in lines:
            consumed.append(n)
            yield text.lossy if n in undecodable else text

    reader = csv.reader(feed())
    number = 0
    try:
        header = next(reader, None)
        if not header or "prompt" not in header:
            raise FileError("A CSV prompt file needs a 'prompt' column.")
        consumed.clear()
        rows = []
        for values in reader:
            spans = consumed[:]
            consumed.clear()
            number = spans[-1]
            if not values or undecodable.intersection(spans):
                continue  # a blank line, or a row holding an undecodable line (reported above)
            report.lines += 1
            row = {k: v for k, v in zip(header, values) if k and v != ""}
            try:
                check_no_nul(row)
            except FormatError as exc:
                report.errors.append((number, str(exc)))
                continue
            rows.append((number, row))
        return rows
    except csv.Error as exc:
        raise FileError(f"line {consumed[-1] if consumed else number}: unreadable CSV ({exc})") from None


# ---------------------------------------------------------------- export


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    """One JSON line per row (UTF-8 as is, not \\u-escaped): what the exports write and stream."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"
