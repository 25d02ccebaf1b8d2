"""A real Celery worker process: on Redis + PostgreSQL, and on the embedded default
(SQLite file + Celery filesystem transport) together with the web server."""

import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation.models import Assignment
from tests.factories import ComparisonFactory, UserFactory
from tests.processes import ROOT, base_env, celery_worker, free_port, process, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.mark.django_db(transaction=True)
def test_worker_on_redis_and_postgresql_expires_leases(tmp_path):
    from workers.tasks import expire_leases

    now = timezone.now()
    comparison = ComparisonFactory()
    a = Assignment.objects.create(
        comparison=comparison, annotator=UserFactory(), order="ab",
        leased_at=now - timedelta(minutes=30), expires_at=now - timedelta(minutes=15),
    )
    queue = f"test-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    env = base_env(
        DJANGO_SETTINGS_MODULE="webapp.settings.test",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    )
    with celery_worker(env=env, log=tmp_path / "worker.log", queues=queue):
        expire_leases.apply_async(queue=queue)
        wait_for(
            lambda: Assignment.objects.get(pk=a.pk).state == Assignment.State.EXPIRED,
            timeout=60, what="the worker to expire the lease", log=tmp_path / "worker.log",
        )
    assert "workers.tasks.expire_leases" in (tmp_path / "worker.log").read_text()


def test_embedded_default_sqlite_filesystem_transport(tmp_path):
    """No DATABASE_URL, no CELERY_BROKER_URL: migrate, seed, web and worker all run."""
    env = base_env(PREFLOOP_VAR=str(tmp_path), DJANGO_SETTINGS_MODULE="webapp.settings.local")
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(key, None)

    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    manage("migrate", "--noinput", "-v0")
    seeded = manage("seed_demo")
    assert "Campaign 'demo': 58 prompts, 58 comparisons" in seeded and "alice" in seeded
    db = tmp_path / "prefloop.sqlite3"
    with sqlite3.connect(db) as con:
        comparisons = con.execute("select count(*) from annotation_comparison where kind='normal'").fetchone()[0]
        user_id = con.execute("select id from auth_user where username='alice'").fetchone()[0]
        comparison_id = con.execute("select id from annotation_comparison limit 1").fetchone()[0]
        con.execute(
            "insert into annotation_assignment (comparison_id, annotator_id, 'order', state, leased_at, expires_at, skip_reason)"
            " values (?, ?, 'ab', 'active', '2020-01-01 00:00:00', '2020-01-01 00:15:00', '')",
            (comparison_id, user_id),
        )
    assert comparisons == 50

    port = free_port()
    with celery_worker(env=env, log=tmp_path / "worker.log", queues="default"), process(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=env, log=tmp_path / "web.log", ready="Quit the server",
    ):
        manage("shell", "-c", "from workers.tasks import expire_leases; expire_leases.delay()")

        def expired():
            with sqlite3.connect(db) as con:
                return con.execute("select state from annotation_assignment").fetchone()[0] == "expired"

        wait_for(expired, timeout=60, what="the embedded worker to run the task", log=tmp_path / "worker.log")
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10).read().decode()
        assert "Log in" in login
        js = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/annotation/annotate.js", timeout=10).read().decode()
        assert "keydown" in js
