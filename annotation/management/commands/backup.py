from pathlib import Path

from django.core.management.base import BaseCommand

from annotation.management.commands._common import command_errors
from annotation.services.backups import database_backup


class Command(BaseCommand):
    help = ("Write a consistent snapshot of the database: pg_dump custom format for PostgreSQL, SQLite's online "
            "backup for the embedded default. Restore it with `manage.py restore PATH`.")

    def add_arguments(self, parser):
        parser.add_argument("-o", "--output", default=None,
                            help="backup file (default: var/backups/prefloop-<time>.dump or .sqlite3)")

    def handle(self, *args, output, **options):
        with command_errors():
            path = database_backup(output=Path(output) if output else None)
        self.stdout.write(str(path))
        self.stderr.write(self.style.SUCCESS(f"backup written: {path} ({path.stat().st_size:,} bytes)"))
