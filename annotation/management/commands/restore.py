from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.management.commands._common import command_errors
from annotation.services.backups import database_restore


class Command(BaseCommand):
    help = ("Replace the database's contents with a backup made by `manage.py backup` (same engine). PostgreSQL "
            "restores in one transaction: a failed restore changes nothing. Stop the web server and workers first.")

    def add_arguments(self, parser):
        parser.add_argument("path", help="the backup file")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, path, yes, **options):
        if not yes:
            if not self.stdin_is_tty():
                raise CommandError("restore replaces every row of the database: pass --yes to confirm")
            answer = input(f"Replace every row of the database with {path}? Type 'yes': ")
            if answer.strip() != "yes":
                raise CommandError("restore cancelled")
        with command_errors():
            database_restore(path=Path(path))
        self.stderr.write(self.style.SUCCESS(f"restored from {path}"))

    @staticmethod
    def stdin_is_tty() -> bool:
        import sys

        return sys.stdin.isatty()
