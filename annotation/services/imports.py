"""Imports of prompts and preference tuples from numbered lines (``annotation.parsing`` reads
the files). Bad lines are reported by number and reason; with ``strict`` nothing is written
if any line is bad; importing the same rows again creates nothing new."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Campaign, Preference, Prompt, Response
from annotation.parsing import FileError, ImportReport, Line, csv_rows, json_lines, parse_rows, prompt_row
from training.formats import PREFERENCE_READERS, PreferenceRecord, messages_hash, text_hash


def prompts_import(*, campaign: Campaign, lines: list[Line], fmt: str = "jsonl", strict: bool = False) -> ImportReport:
    """Import prompts from numbered lines of JSONL (``prompt`` or ``messages``) or CSV (a
    ``prompt`` column). Bad lines are reported; with ``strict`` nothing is written if any is bad."""
    limits = settings.PREFLOOP

    def parse(row: dict):
        return prompt_row(row, max_text_chars=limits["MAX_TEXT_CHARS"], splits=tuple(Prompt.Split.values))

    report = ImportReport()
    if fmt == "csv":
        try:
            rows = csv_rows(lines, report)
        except FileError as exc:
            raise InvalidInput(str(exc)) from None
        good = parse_rows(rows, report, parse)
        report.errors.sort()
    elif fmt == "jsonl":
        good = json_lines(lines, report, parse, max_line_chars=limits["MAX_IMPORT_LINE_CHARS"])
    else:
        raise InvalidInput(f"Unknown prompt format {fmt!r}; use jsonl or csv.")
    if strict and report.errors:
        return report
    with transaction.atomic():
        for _, (messages, tags, split) in good:
            _, created = Prompt.objects.get_or_create(
                campaign=campaign,
                messages_hash=messages_hash(messages),
                defaults={"messages": messages, "tags": tags, "split": split},
            )
            report.created += created
            report.duplicates += not created
        report.written = True
    return report


def preferences_import(*, campaign: Campaign, lines: Iterable[Line], fmt: str, strict: bool = False) -> ImportReport:
    """Import preference tuples (TRL or HH format). Bad lines are reported by number and reason;
    with ``strict`` nothing is written if any line is bad. Re-importing creates no duplicates."""
    if fmt not in PREFERENCE_READERS:
        raise InvalidInput(f"Unknown preference format {fmt!r}; use one of {', '.join(PREFERENCE_READERS)}.")
    reader = PREFERENCE_READERS[fmt]
    limits = settings.PREFLOOP
    report = ImportReport()
    good: list[tuple[int, PreferenceRecord]] = json_lines(
        lines, report, lambda row: reader(row, max_chars=limits["MAX_TEXT_CHARS"]), max_line_chars=limits["MAX_IMPORT_LINE_CHARS"]
    )
    if strict and report.errors:
        return report
    with transaction.atomic():
        # One importer per campaign at a time, so the bulk inserts below cannot race.
        Campaign.objects.select_for_update().get(pk=campaign.pk)
        prompt_ids = _bulk_prompts(campaign, [rec.prompt for _, rec in good])
        keys = []
        for _, rec in good:
            pid = prompt_ids[messages_hash(rec.prompt)]
            keys.append((pid, rec.chosen, rec.rejected))
        response_ids = _bulk_import_responses({(pid, t) for pid, c, r in keys for t in (c, r)})
        pairs = {}
        for pid, c, r in keys:
            pairs.setdefault((response_ids[(pid, text_hash(c))], response_ids[(pid, text_hash(r))]), pid)
        existing = set(
            Preference.objects.filter(comparison__isnull=True, chosen_id__in=[c for c, _ in pairs]).values_list(
                "chosen_id", "rejected_id"
            )
        )
        new = [
            Preference(campaign=campaign, prompt_id=pid, chosen_id=c, rejected_id=r, source=Preference.Source.IMPORT)
            for (c, r), pid in pairs.items()
            if (c, r) not in existing
        ]
        Preference.objects.bulk_create(new, batch_size=500)
        report.created = len(new)
        report.duplicates = len(good) - len(new)
        report.written = True
    return report


def _bulk_prompts(campaign: Campaign, prompts: list[list[dict]]) -> dict[str, int]:
    by_hash = {messages_hash(p): p for p in prompts}
    found = dict(
        Prompt.objects.filter(campaign=campaign, messages_hash__in=list(by_hash)).values_list("messages_hash", "pk")
    )
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
