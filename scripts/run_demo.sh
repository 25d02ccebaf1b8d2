#!/usr/bin/env bash
# Start web + Celery worker (default, gpu and serve queues) + beat, print where to log in, stop all on Ctrl-C.
# The web server is the production one (gunicorn, webapp/gunicorn.conf.py) with the local settings; on
# the embedded SQLite default one process with threads (SQLite serialises writes anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-8000}
mkdir -p var
$PY -m celery -A webapp worker --beat --queues default,gpu,serve --concurrency 1 --loglevel INFO \
    --logfile var/worker.log --schedule var/celerybeat-schedule &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; wait $WORKER 2>/dev/null' EXIT INT TERM
if [ -z "${DATABASE_URL:-}" ]; then db="embedded SQLite (var/prefloop.sqlite3)"; else db="$DATABASE_URL"; fi
cat <<MSG

  Prefloop is running:  http://127.0.0.1:${PORT}/
  Log in with one of the demo users printed above (admin, alice, bob, carol).
  Admin:                http://127.0.0.1:${PORT}/admin/
  API docs:             http://127.0.0.1:${PORT}/api/docs/
  Database:             ${db}
  Worker log:           var/worker.log      (Ctrl-C stops everything)
  Web server:           gunicorn, access log var/web-access.log
  Pairs:                sampled from the embedded SmolLM2-135M-Instruct; the worker keeps
                        20 open (about 40 tokens/s on a 2-core CPU, so it fills in a few minutes)

MSG
if [ -z "${DATABASE_URL:-}" ]; then workers=1; else workers=${WEB_WORKERS:-2}; fi
DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-webapp.settings.local} WEB_BIND="127.0.0.1:${PORT}" WEB_WORKERS=$workers \
    WEB_ACCESS_LOG=${WEB_ACCESS_LOG:-var/web-access.log} $PY -m gunicorn -c webapp/gunicorn.conf.py webapp.wsgi:application
