"""Shared bits of the import/export commands: campaign lookup, numbered lines, the report."""

import contextlib
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from annotation.errors import ApplicationError
from annotation.models import Campaign
from annotation.parsing import StreamedLines, max_line_bytes


@contextlib.contextmanager
def command_errors():
    """Service errors become a one-line CommandError (exit status 1), not a traceback."""
    try:
        yield
    except ApplicationError as exc:
        raise CommandError(exc.message) from None


def campaign_or_error(slug: str) -> Campaign:
    try:
        return Campaign.objects.get(slug=slug)
    except Campaign.DoesNotExist:
        known = ", ".join(Campaign.objects.values_list("slug", flat=True)[:20]) or "none"
        raise CommandError(f"No campaign '{slug}' (known: {known}).") from None


def numbered_lines(path: str) -> StreamedLines:
    """Numbered lines of a UTF-8 text file, read a piece at a time (a line that is not UTF-8 or
    too long is reported by number)."""
    p = Path(path)
    if not p.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        p.open("rb").close()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None
    return StreamedLines(lambda: p.open("rb"), max_line_bytes=max_line_bytes(settings.PREFLOOP["MAX_IMPORT_LINE_CHARS"]))


def print_report(command, report, *, what: str, path: str, strict: bool) -> None:
    """The listed bad lines as ``path:number: reason`` (the first ``MAX_REPORTED_ERRORS``; how
    many more there are after them), then the counts."""
    for number, reason in report.errors:
        command.stderr.write(f"{path}:{number}: {reason}")
    if report.errors_truncated:
        command.stderr.write(f"{path}: {report.error_count - len(report.errors)} more bad line(s) not listed")
    if not report.written:
        raise CommandError(f"{report.error_count} bad line(s) of {report.lines}; --strict: nothing was imported.")
    summary = (f"{report.created} {what} imported, {report.duplicates} already present, "
               f"{report.error_count} bad line(s) skipped ({report.lines} lines read).")
    command.stdout.write(command.style.SUCCESS(summary) if not report.error_count else command.style.WARNING(summary))
