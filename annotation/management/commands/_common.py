"""Shared bits of the import/export commands: campaign lookup, numbered lines, the report."""

import contextlib
from pathlib import Path

from django.core.management.base import CommandError

from annotation.errors import ApplicationError
from annotation.models import Campaign
from training import formats


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


def numbered_lines(path: str) -> list[formats.Line]:
    """Numbered lines of a UTF-8 text file (a line that is not UTF-8 is reported by number)."""
    p = Path(path)
    if not p.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        return formats.numbered_lines(p.read_bytes())
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None


def print_report(command, report, *, what: str, path: str, strict: bool) -> None:
    for number, reason in report.errors:
        command.stderr.write(f"{path}:{number}: {reason}")
    if not report.written:
        raise CommandError(f"{len(report.errors)} bad line(s) of {report.lines}; --strict: nothing was imported.")
    summary = f"{report.created} {what} imported, {report.duplicates} already present, {len(report.errors)} bad line(s) skipped ({report.lines} lines read)."
    command.stdout.write(command.style.SUCCESS(summary) if not report.errors else command.style.WARNING(summary))
