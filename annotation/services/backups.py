"""Backup and restore of the database: ``pg_dump``/``pg_restore`` for PostgreSQL (custom
format, one consistent snapshot, restored in one transaction), SQLite's online backup API for
the embedded default (a consistent copy while the server runs).

Model artifacts (checkpoints under the artifact directory) are files, not rows: back them up
with the file system; the database keeps their paths.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.utils import timezone

from annotation.errors import InvalidInput

SQLITE_SUFFIX, PG_SUFFIX = ".sqlite3", ".dump"
_PG_MAGIC, _SQLITE_MAGIC = b"PGDMP", b"SQLite format 3\x00"


def _database(alias: str = "default") -> dict:
    return settings.DATABASES[alias]


def _is_sqlite(db: dict) -> bool:
    return db["ENGINE"] == "django.db.backends.sqlite3"


def _pg_env(db: dict) -> dict:
    env = dict(os.environ)
    for key, var in (("HOST", "PGHOST"), ("PORT", "PGPORT"), ("USER", "PGUSER"), ("PASSWORD", "PGPASSWORD")):
        if db.get(key):
            env[var] = str(db[key])
    return env


def _run(cmd: list[str], env: dict) -> None:
    if shutil.which(cmd[0]) is None:
        raise InvalidInput(f"{cmd[0]} is not installed (Debian: apt-get install postgresql-client)")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise InvalidInput(f"{cmd[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def default_backup_path(alias: str = "default") -> Path:
    suffix = SQLITE_SUFFIX if _is_sqlite(_database(alias)) else PG_SUFFIX
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.VAR_DIR) / "backups" / f"prefloop-{stamp}{suffix}"


def database_backup(*, output: Path | None = None, alias: str = "default") -> Path:
    """Write a consistent snapshot of the database to ``output`` (written beside it, then
    renamed: never half a file). Returns the path."""
    db = _database(alias)
    out = Path(output) if output else default_backup_path(alias)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if _is_sqlite(db):
            src = sqlite3.connect(str(db["NAME"]))
            dst = sqlite3.connect(tmp)
            try:
                with dst:
                    src.backup(dst)  # SQLite's online backup: a consistent copy while others write
            finally:
                dst.close()
                src.close()
        else:
            # Custom format: compressed, restorable table by table; pg_dump reads one snapshot.
            _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={tmp}", str(db["NAME"])], _pg_env(db))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def database_restore(*, path: Path, alias: str = "default") -> None:
    """Replace the database's contents with the backup at ``path`` (made by ``database_backup``
    for the same engine). PostgreSQL: in one transaction, so a failed restore changes nothing."""
    db = _database(alias)
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(16)
    sqlite = _is_sqlite(db)
    if sqlite and not head.startswith(_SQLITE_MAGIC):
        raise InvalidInput(f"{path} is not a SQLite backup (this database is SQLite)")
    if not sqlite and not head.startswith(_PG_MAGIC):
        raise InvalidInput(f"{path} is not a pg_dump custom-format backup (this database is PostgreSQL)")
    connections[alias].close()
    if sqlite:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dst = sqlite3.connect(str(db["NAME"]))
        try:
            with dst:
                src.backup(dst)  # page by page into the live file, under SQLite's own locking
        finally:
            dst.close()
            src.close()
        return
    _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
          "--exit-on-error", f"--dbname={db['NAME']}", str(path)], _pg_env(db))
