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
