"""Production settings: pass `check --deploy` cleanly and refuse to start without a secret key."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env_extra, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"DJANGO_SETTINGS_MODULE": "webapp.settings.production", **env_extra})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


PROD = {
    "SECRET_KEY": "k3y-" + "x9Q!z" * 12,
    "ALLOWED_HOSTS": "prefloop.example.org",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
}


def test_check_deploy_has_no_warnings():
    out = manage("check", "--deploy", "--fail-level", "WARNING", env_extra=PROD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues (0 silenced)." in out.stdout


def test_production_refuses_to_start_without_secret_key():
    env = {k: v for k, v in PROD.items() if k != "SECRET_KEY"}
    out = manage("check", env_extra=env, drop=("SECRET_KEY",))
    assert out.returncode != 0
    assert "Set the SECRET_KEY environment variable" in out.stderr


def test_database_url_pools_postgresql_connections_when_asked():
    from webapp.settings.base import database_from_url

    pooled = database_from_url("postgres://u@db.example.org:5432/prefloop", pool_size=4)
    assert pooled["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 4, "timeout": 10}
    assert pooled["CONN_MAX_AGE"] == 0 and pooled["CONN_HEALTH_CHECKS"]  # the pool refuses persistent connections
    plain = database_from_url("postgres://u@db.example.org:5432/prefloop")
    assert "pool" not in plain.get("OPTIONS", {}) and plain["CONN_MAX_AGE"] == 60
    assert "pool" not in database_from_url("sqlite:////tmp/prefloop-x.sqlite3", pool_size=4)["OPTIONS"]  # SQLite: never


POOL_PROBE = """
import threading
from django.db import connection
pids = set()
def work():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), pg_sleep(0.2)")
        pids.add(cursor.fetchone()[0])
    connection.close()  # back to the pool, as at the end of a request
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
pool = connection.pool
print("pool", pool and pool.max_size, connection.settings_dict["CONN_MAX_AGE"], "backends", len(pids))
"""


def test_production_pools_connections_so_threads_cannot_exhaust_postgresql():
    """Six threads at once (a gthread worker's) share the pool's connections: at most its size."""
    def probe(size: str | None) -> list[str]:
        env = {**PROD, **({"PREFLOOP_DB_POOL_SIZE": size} if size is not None else {})}
        out = manage("shell", "--no-imports", "-c", POOL_PROBE, env_extra=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    pooled = probe("2")
    assert pooled[:4] == ["pool", "2", "0", "backends"] and int(pooled[4]) <= 2, pooled
    assert probe(None)[:3] == ["pool", "4", "0"]  # the default
    assert probe("0")[:3] == ["pool", "None", "60"]  # no pool: persistent connections


def test_the_demo_serves_with_gunicorn_on_the_embedded_default(tmp_path):
    """`make demo`'s web server (scripts/run_demo.sh): gunicorn with webapp/gunicorn.conf.py, local
    settings, SQLite, one gthread worker; it answers pages and its static files."""
    import urllib.request

    from tests.processes import free_port, process, wait_for

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings.local", PREFLOOP_VAR=str(tmp_path), WEB_BIND=f"127.0.0.1:{port}",
               WEB_WORKERS="1", WEB_ACCESS_LOG="")
    with process([sys.executable, "-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "webapp.wsgi:application"], env=env,
                 log=tmp_path / "web.log", ready="Booting worker"):
        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()

        def up():
            try:
                return get("/accounts/login/")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=60, what="gunicorn")
        assert "gthread" in (tmp_path / "web.log").read_text()
        assert get("/static/annotation/app.css")[0] == 200
