from django.core.management.base import BaseCommand

from annotation.management.commands._common import campaign_or_error, command_errors, numbered_lines, print_report
from annotation.services import preferences_import


class Command(BaseCommand):
    help = "Import preference pairs from JSONL in TRL (prompt/chosen/rejected) or Anthropic HH format."

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--format", required=True, choices=["trl", "hh"], dest="fmt")
        parser.add_argument("--strict", action="store_true", help="import nothing if any line is bad")

    def handle(self, *args, file, campaign, fmt, strict, **options):
        camp = campaign_or_error(campaign)
        with command_errors():
            report = preferences_import(campaign=camp, lines=numbered_lines(file), fmt=fmt, strict=strict)
        print_report(self, report, what="preference(s)", path=file, strict=strict)
