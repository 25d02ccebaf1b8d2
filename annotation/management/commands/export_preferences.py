import os
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.management.commands._common import campaign_or_error
from annotation.parsing import jsonl_lines
from annotation.models import AuditEvent
from annotation.selectors import EXPORT_FORMATS, preferences_export_rows
from annotation.services.audit import audit_record
from annotation.snapshots import snapshot_rows


class Command(BaseCommand):
    help = ("Export a campaign's preferences as conversational TRL JSONL: paired prompt/chosen/rejected (trl: DPO, reward) "
            "or unpaired prompt/completion/label (kto, with 'both bad' verdicts as undesirable); datasets reads both as is.")

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--format", default="trl", choices=EXPORT_FORMATS, dest="fmt")
        parser.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
        parser.add_argument("--with-meta", action="store_true", help="add source, judges, votes, agreement, margin, strengths, rationales, models")

    def handle(self, *args, campaign, fmt, output, with_meta, **options):
        camp = campaign_or_error(campaign)
        audit_record(actor=None, action=AuditEvent.Action.EXPORT, campaign=camp, target=fmt,
                     details={"with_meta": with_meta, "via": "command", "output": output})
        rows = snapshot_rows(lambda: preferences_export_rows(campaign=camp, with_meta=with_meta, fmt=fmt))
        if output == "-":
            n = self._write(rows, sys.stdout)
        else:
            out = Path(output)
            if not out.parent.is_dir():
                raise CommandError(f"{out.parent}: no such directory")
            # Write to a temporary file and rename: a failed export never leaves half a file.
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    n = self._write(rows, f)
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.stderr.write(self.style.SUCCESS(f"{n} {fmt} row(s) written to {out}"))

    @staticmethod
    def _write(rows, f) -> int:
        n = 0
        for line in jsonl_lines(rows):
            f.write(line)
            n += 1
        return n
