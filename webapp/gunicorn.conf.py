"""gunicorn's settings for Prefloop's web server: docker-compose's `web` and `make demo` run
`gunicorn -c webapp/gunicorn.conf.py webapp.wsgi:application`. The environment overrides each:

- WEB_BIND (default 0.0.0.0:8000), WEB_WORKERS (4), WEB_WORKER_CLASS (gthread), WEB_THREADS (4),
  WEB_TIMEOUT (120 s, above PREFLOOP["CHAT_TIMEOUT_SECONDS"]), WEB_ACCESS_LOG ("-": stdout; "" for none).

gthread workers: each process serves WEB_THREADS requests at once and keeps clients' connections
alive between requests; a thread waiting for PostgreSQL or Redis leaves the CPU to another.
Measured against 4 sync workers with `benchmarks/annotator_load.py --worker-class` (issue 13): on
2 shared cores at zero think time about as fast (within the noise); chosen for what sync cannot do:
keep 1,000 idle annotators' connections alive, and go on serving while /v1/chat/completions waits
up to a minute for a model worker (4 such calls block 4 sync workers, i.e. all annotation).
Each process pools at most PREFLOOP_DB_POOL_SIZE database connections (production settings),
whatever its threads. On the embedded SQLite default (`make demo`) one
process with threads: SQLite serialises writes anyway, and one process keeps one file lock queue.
"""

import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", "4"))
worker_class = os.environ.get("WEB_WORKER_CLASS", "gthread")
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None
