"""Start real processes (Celery worker, web server) for integration tests, and stop them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, *, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(poll)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@contextlib.contextmanager
def process(args: list[str], *, env: dict, log: Path, ready: str | None = None, timeout: float = 90):
    """Run ``args`` with output to ``log``; wait until ``ready`` appears in it; terminate on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if ready:
            wait_for(lambda: ready in log.read_text(), timeout=timeout, what=f"'{ready}' from {args[:4]}", proc=proc, log=log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def celery_worker(*, env: dict, log: Path, queues: str):
    return process(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--pool", "solo", "--queues", queues,
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, log=log, ready="ready.",
    )


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def worker_env(**extra) -> dict:
    """The environment of a worker process on this test session's database and broker."""
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    return base_env(DJANGO_SETTINGS_MODULE="webapp.settings.test",
                    DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                    CELERY_BROKER_URL=settings.CELERY_BROKER_URL, **extra)
