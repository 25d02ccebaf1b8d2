from django.core.management.base import BaseCommand

from annotation.management.commands._common import campaign_or_error, command_errors, numbered_lines, print_report
from annotation.parsing import prompt_file_format
from annotation.services import prompts_import


class Command(BaseCommand):
    help = "Import prompts: JSONL with 'prompt' (text) or 'messages' (turns), or CSV with a 'prompt' column."

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--strict", action="store_true", help="import nothing if any line is bad")

    def handle(self, *args, file, campaign, strict, **options):
        camp = campaign_or_error(campaign)
        with command_errors():
            report = prompts_import(campaign=camp, lines=numbered_lines(file), fmt=prompt_file_format(file), strict=strict)
        print_report(self, report, what="prompt(s)", path=file, strict=strict)
