"""Imports of prompts and preference tuples from numbered lines (``annotation.parsing`` reads
the files). Bad lines are reported by number and reason (the first ones listed, all counted);
with ``strict`` nothing is written if any line is bad; importing the same rows again creates
nothing new.

Streamed, in bounded memory: lines are read one at a time and good rows written in batches of
``IMPORT_BATCH_ROWS``, all batches in one transaction (a failure leaves nothing behind). A strict
import checks every line before writing any, so it reads its lines twice: ``lines`` must be
iterable more than once (a list, or ``parsing.StreamedLines``, which reads the file again)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from django.conf import settings
from django.db import transaction

from annotation import limits
from annotation.errors import InvalidInput
from annotation.models import Campaign, Preference, Prompt, Response
from annotation.parsing import FileError, ImportReport, Line, csv_rows, json_lines, parse_rows, prompt_row
from training.formats import PREFERENCE_READERS, PreferenceRecord, messages_hash, text_hash

Rows = Callable[[ImportReport], Iterator[tuple[int, object]]]  # one reading of the good rows; errors go to the report


def prompts_import(*, campaign: Campaign, lines: Iterable[Line], fmt: str = "jsonl", strict: bool = False) -> ImportReport:
    """Import prompts from numbered lines of JSONL (``prompt`` or ``messages``) or CSV (a
    ``prompt`` column). Bad lines are reported; with ``strict`` nothing is written if any is bad."""
    if fmt not in ("jsonl", "csv"):
        raise InvalidInput(f"Unknown prompt format {fmt!r}; use jsonl or csv.")
    config = settings.PREFLOOP
    max_text_chars, splits = config["MAX_TEXT_CHARS"], tuple(Prompt.Split.values)  # once, not per line

    def parse(row: dict):
        return prompt_row(row, max_text_chars=max_text_chars, splits=splits)

    def rows(report: ImportReport):
        if fmt == "csv":
            return parse_rows(csv_rows(lines, report), report, parse)
        return json_lines(lines, report, parse, max_line_chars=config["MAX_IMPORT_LINE_CHARS"])

    return _import(campaign=campaign, lines=lines, rows=rows, write=_write_prompts, strict=strict)


def preferences_import(*, campaign: Campaign, lines: Iterable[Line], fmt: str, strict: bool = False) -> ImportReport:
    """Import preference tuples (TRL or HH format). Bad lines are reported by number and reason;
    with ``strict`` nothing is written if any line is bad. Re-importing creates no duplicates."""
    if fmt not in PREFERENCE_READERS:
        raise InvalidInput(f"Unknown preference format {fmt!r}; use one of {', '.join(PREFERENCE_READERS)}.")
    reader = PREFERENCE_READERS[fmt]
    config = settings.PREFLOOP
    max_text_chars = config["MAX_TEXT_CHARS"]

    def rows(report: ImportReport):
        return json_lines(lines, report, lambda row: reader(row, max_chars=max_text_chars), max_line_chars=config["MAX_IMPORT_LINE_CHARS"])

    return _import(campaign=campaign, lines=lines, rows=rows, write=_write_preferences, strict=strict)


# ---------------------------------------------------------------- one import: check, then write in batches


def _import(*, campaign: Campaign, lines: Iterable[Line], rows: Rows, write, strict: bool) -> ImportReport:
    if strict:
        if iter(lines) is lines:
            raise TypeError("a strict import reads its lines twice: pass a list or parsing.StreamedLines, not an iterator")
        check = ImportReport()
        for _ in _read(rows, check):  # no database work, no lock: a bad file is refused cheaply
            pass
        if check.error_count:
            return check
    report = ImportReport()
    with transaction.atomic():
        locked = False
        for batch in _batches(_read(rows, report), limits.IMPORT_BATCH_ROWS):
            if not locked:
                # One importer per campaign at a time, so the bulk inserts cannot race. Taken at the
                # first good batch: a file of bad lines locks nothing while it is read.
                Campaign.objects.select_for_update().get(pk=campaign.pk)
                locked = True
            created, duplicates = write(campaign, batch)
            report.created += created
            report.duplicates += duplicates
        if strict and report.error_count:  # the file changed between the two readings
            transaction.set_rollback(True)
            report.created = report.duplicates = 0
            return report
        report.written = True
    return report


def _read(rows: Rows, report: ImportReport) -> Iterator[tuple[int, object]]:
    try:
        yield from rows(report)
    except FileError as exc:
        raise InvalidInput(str(exc)) from None


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def _write_prompts(campaign: Campaign, batch: list[tuple[int, tuple[list[dict], list[str], str]]]) -> tuple[int, int]:
    """Create the batch's new prompts (the first row of a prompt wins): (created, duplicates)."""
    by_hash: dict[str, tuple[list[dict], list[str], str]] = {}
    for _, row in batch:
        by_hash.setdefault(messages_hash(row[0]), row)
    found = set(Prompt.objects.filter(campaign=campaign, messages_hash__in=list(by_hash)).values_list("messages_hash", flat=True))
    new = [
        Prompt(campaign=campaign, messages=messages, messages_hash=h, tags=tags, split=split)
        for h, (messages, tags, split) in by_hash.items()
        if h not in found
    ]
    Prompt.objects.bulk_create(new, batch_size=500)
    return len(new), len(batch) - len(new)


def _write_preferences(campaign: Campaign, batch: list[tuple[int, PreferenceRecord]]) -> tuple[int, int]:
    """Create the batch's prompts, responses and new preferences: (created, duplicates)."""
    prompt_ids = _bulk_prompts(campaign, [rec.prompt for _, rec in batch])
    keys = []
    for _, rec in batch:
        pid = prompt_ids[messages_hash(rec.prompt)]
        keys.append((pid, rec.chosen, rec.rejected))
    response_ids = _bulk_import_responses({(pid, t) for pid, c, r in keys for t in (c, r)})
    pairs = {}
    for pid, c, r in keys:
        pairs.setdefault((response_ids[(pid, text_hash(c))], response_ids[(pid, text_hash(r))]), pid)
    existing = set(
        Preference.objects.filter(comparison__isnull=True, chosen_id__in=[c for c, _ in pairs]).values_list("chosen_id", "rejected_id")
    )
    new = [
        Preference(campaign=campaign, prompt_id=pid, chosen_id=c, rejected_id=r, source=Preference.Source.IMPORT)
        for (c, r), pid in pairs.items()
        if (c, r) not in existing
    ]
    Preference.objects.bulk_create(new, batch_size=500)
    return len(new), len(batch) - len(new)


def _bulk_prompts(campaign: Campaign, prompts: list[list[dict]]) -> dict[str, int]:
    by_hash = {messages_hash(p): p for p in prompts}
    found = dict(Prompt.objects.filter(campaign=campaign, messages_hash__in=list(by_hash)).values_list("messages_hash", "pk"))
    missing = [Prompt(campaign=campaign, messages=m, messages_hash=h) for h, m in by_hash.items() if h not in found]
    for p in Prompt.objects.bulk_create(missing, batch_size=500):
        found[p.messages_hash] = p.pk
    return found


def _bulk_import_responses(items: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    wanted = {(pid, text_hash(t)): t for pid, t in items}
    found = {}
    prompt_ids = {pid for pid, _ in wanted}
    for pid, h, pk in Response.objects.filter(
        prompt_id__in=prompt_ids, model_version__isnull=True, text_hash__in={h for _, h in wanted}
    ).values_list("prompt_id", "text_hash", "pk"):
        found[(pid, h)] = pk
    missing = [
        Response(prompt_id=pid, text=t, text_hash=h, source=Response.Source.IMPORT)
        for (pid, h), t in wanted.items()
        if (pid, h) not in found
    ]
    for r in Response.objects.bulk_create(missing, batch_size=500):
        found[(r.prompt_id, r.text_hash)] = r.pk
    return found
