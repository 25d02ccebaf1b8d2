"""Reading import files and writing export files: numbered lines (``training.formats`` turns
bytes into them, a piece at a time) to checked JSON rows and CSV rows, rows to JSON lines. No
Django here (only ``training.formats``, the limits and the standard library): text limits come
in as arguments, and a bad line is reported with its number and reason instead of stopping the
import. Everything streams: a file is never held whole, nor its rows, nor all its errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from annotation import limits
from annotation.limits import MAX_TAG_CHARS
from training.formats import FormatError, Line, UndecodableLine, check_storable, iter_json_rows, iter_numbered_lines, prompt_from_row

T = TypeVar("T")

PROMPT_COLUMNS = ("prompt", "messages", "tags", "split", "id")


class FileError(ValueError):
    """The file as a whole cannot be read (e.g. a CSV file without its ``prompt`` column)."""


@dataclass
class ImportReport:
    """What an import did: the counts, and the first ``MAX_REPORTED_ERRORS`` bad lines with their
    number and reason (``error_count`` counts them all: a file of two million bad lines makes a
    report of a hundred, not of two million)."""

    lines: int = 0
    created: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    error_count: int = 0
    written: bool = False

    def add_error(self, number: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < limits.MAX_REPORTED_ERRORS:
            cap = limits.MAX_ERROR_REASON_CHARS
            self.errors.append((number, reason if len(reason) <= cap else reason[: cap - 1] + "\u2026"))

    @property
    def errors_truncated(self) -> bool:
        return self.error_count > len(self.errors)

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "created": self.created,
            "duplicates": self.duplicates,
            "written": self.written,
            "error_count": self.error_count,
            "errors_truncated": self.errors_truncated,
            "errors": [{"line": n, "reason": r} for n, r in self.errors],
        }


# ---------------------------------------------------------------- files


class StreamedLines:
    """The numbered lines of a binary file, read afresh in pieces of ``IMPORT_READ_BYTES`` each
    time they are iterated (a strict import reads them twice: to check, then to write). ``open``
    gives the file positioned at its start; it is closed after each reading when ``close``."""

    def __init__(self, open: Callable[[], BinaryIO], *, close: bool = True, max_line_bytes: int | None = None):
        self.open, self.close, self.max_line_bytes = open, close, max_line_bytes

    def __iter__(self) -> Iterator[Line]:
        f = self.open()
        try:
            yield from iter_numbered_lines(iter(lambda: f.read(limits.IMPORT_READ_BYTES), b""), max_line_bytes=self.max_line_bytes)
        finally:
            if self.close:
                f.close()


def max_line_bytes(max_line_chars: int) -> int:
    """The longest line worth decoding: a UTF-8 character takes at most 4 bytes."""
    return 4 * max_line_chars


# ---------------------------------------------------------------- rows


def json_lines(lines: Iterable[Line], report: ImportReport, parse: Callable[[dict], T], *, max_line_chars: int) -> Iterator[tuple[int, T]]:
    """(number, ``parse(row)``) for each good non-blank line, one at a time; each bad one goes to the report."""
    for number, value, reason in iter_json_rows(lines, parse, max_line_chars=max_line_chars):
        report.lines += 1
        if reason is None:
            yield number, value
        else:
            report.add_error(number, reason)


def parse_rows(rows: Iterable[tuple[int, dict]], report: ImportReport, parse: Callable[[dict], T]) -> Iterator[tuple[int, T]]:
    """(number, ``parse(row)``) for already split rows (CSV); a FormatError goes to the report."""
    for number, row in rows:
        try:
            yield number, parse(row)
        except FormatError as exc:
            report.add_error(number, str(exc))


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


def csv_rows(lines: Iterable[Line], report: ImportReport) -> Iterator[tuple[int, dict]]:
    """Numbered rows (the number of the row's last line) of a CSV file with a ``prompt`` column,
    given as numbered lines, one at a time; quoted fields may span lines. An undecodable line is a
    reported bad line, and the row it belongs to is skipped; empty cells are left out. Raises
    FileError for the file as a whole (no ``prompt`` column, broken quoting)."""
    consumed: list[tuple[int, UndecodableLine | None]] = []  # the lines the reader has taken for the current row

    def feed() -> Iterator[str]:
        for n, text in lines:
            consumed.append((n, text if isinstance(text, UndecodableLine) else None))
            # With its newline: the csv module keeps a line break inside a quoted field only if the line has one.
            yield (text.lossy if isinstance(text, UndecodableLine) else text) + "\n"

    def unreadable(spans: list[tuple[int, UndecodableLine | None]]) -> list[tuple[int, UndecodableLine]]:
        return [(n, text) for n, text in spans if text is not None]

    reader = csv.reader(feed())
    number = 0
    try:
        header = next(reader, None)
        if bad := unreadable(consumed):
            raise FileError(f"line {bad[0][0]}: the CSV header is not UTF-8 text, so no column can be read.")
        if not header or "prompt" not in header:
            raise FileError("A CSV prompt file needs a 'prompt' column.")
        consumed.clear()
        for values in reader:
            spans = consumed[:]
            consumed.clear()
            number = spans[-1][0]
            if bad := unreadable(spans):  # the row is skipped; its unreadable lines are the errors
                for n, text in bad:
                    report.add_error(n, text.reason)
                report.lines += len(bad)
                continue
            if not values:
                continue  # a blank line
            report.lines += 1
            row = {k: v for k, v in zip(header, values) if k and v != ""}
            try:
                check_storable(row)
            except FormatError as exc:
                report.add_error(number, str(exc))
                continue
            yield number, row
    except csv.Error as exc:
        raise FileError(f"line {consumed[-1][0] if consumed else number}: unreadable CSV ({exc})") from None


# ---------------------------------------------------------------- export


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    """One JSON line per row (UTF-8 as is, not \\u-escaped): what the exports write and stream."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"
