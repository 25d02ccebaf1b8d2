"""Reading import files and writing export files: numbered lines (``training.formats`` turns
bytes into them) to checked JSON rows and CSV rows, rows to JSON lines. No Django here (only
``training.formats``, the limits and the standard library): text limits come in as arguments,
and a bad line is reported with its number and reason instead of stopping the import.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from annotation.limits import MAX_TAG_CHARS
from training.formats import FormatError, Line, UndecodableLine, check_storable, json_rows, prompt_from_row

T = TypeVar("T")

PROMPT_COLUMNS = ("prompt", "messages", "tags", "split", "id")


class FileError(ValueError):
    """The file as a whole cannot be read (e.g. a CSV file without its ``prompt`` column)."""


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


# ---------------------------------------------------------------- rows


def json_lines(
    lines: Iterable[Line], report: ImportReport, parse: Callable[[dict], T], *, max_line_chars: int
) -> list[tuple[int, T]]:
    """(number, ``parse(row)``) for each good non-blank line; each bad one goes to ``report.errors``."""
    good, bad = json_rows(lines, parse, max_line_chars=max_line_chars)
    report.lines += len(good) + len(bad)
    report.errors.extend(bad)
    return good


def parse_rows(rows: Iterable[tuple[int, dict]], report: ImportReport, parse: Callable[[dict], T]) -> list[tuple[int, T]]:
    """(number, ``parse(row)``) for already split rows (CSV); a FormatError goes to ``report.errors``."""
    good = []
    for number, row in rows:
        try:
            good.append((number, parse(row)))
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
            # With its newline: the csv module keeps a line break inside a quoted field only if the line has one.
            yield (text.lossy if n in undecodable else text) + "\n"

    reader = csv.reader(feed())
    number = 0
    try:
        header = next(reader, None)
        if undecodable.intersection(consumed):
            raise FileError(f"line {min(undecodable)}: the CSV header is not UTF-8 text, so no column can be read.")
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
                check_storable(row)
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
