"""Faults while annotators vote: gunicorn workers SIGKILLed, Redis restarted, PostgreSQL
restarted, a Celery worker SIGKILLed in the middle of ``sample_pairs`` and of a training run,
all during a zero-think-time load over real HTTP (``annotator_load.py``'s server and locust
users, who retry after an error as a person would). Afterwards: acknowledged votes lost (must
be 0), duplicates (0), comparisons over their overlap (0), comparisons whose count of active
leases is wrong (0), and for each fault how long until
annotators completed a cycle again (the Celery faults: until sampling, and training, work
again; ``celery_faults.py`` says how and what it checks).

    python benchmarks/annotator_faults.py [--quick] [--users 20] [--seconds 90]
        [--only gunicorn,redis,postgres,celery] [--db postgres://...] [--broker redis://...]
    python benchmarks/annotator_faults.py --quick --only celery \
        --db postgres://postgres@127.0.0.1:5432/prefloop_faults --broker redis://127.0.0.1:6379/11

The ``redis`` and ``postgres`` scenarios restart this machine's Redis and PostgreSQL
(``redis-server`` on 6379 with nothing kept on disk; ``pg_ctlcluster``): run them where nothing
else uses them. ``--only celery`` restarts neither: it starts its own Celery workers on
``--broker`` (its database index and the next one, the cache) and ``--db``, and deletes
kombu's queue keys on that broker database before and after. The load runs ``--seconds`` for
the web scenarios plus ``--celery-seconds`` for the Celery ones.

Last line: ``RESULT lost_votes=0 duplicates=0 over_overlap=0 leased_miscounted=0 recovery_s_max=... errors=...``
(with the Celery scenarios also ``celery_refill_recovery_s=... training_recovery_s=...
training_restart_s=... stuck=0 celery_duplicates=0 celery_partial_pairs=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import annotator_load as load  # noqa: E402
from benchmarks import celery_faults, harness  # noqa: E402
from tests.processes import free_port  # noqa: E402

SCENARIOS = ("gunicorn", "redis", "postgres", "celery")


def gunicorn_workers(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def redis_restart() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    time.sleep(1.0)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True)


def postgres_restart() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, capture_output=True)


def progress_count(slug: str) -> int:
    """Votes stored so far, from a fresh connection (the faults break pooled ones)."""
    import psycopg

    for _ in range(100):
        try:
            with psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=2) as c:
                return c.execute("SELECT count(*) FROM annotation_vote v JOIN annotation_comparison c ON v.comparison_id = c.id "
                                 "JOIN annotation_campaign k ON c.campaign_id = k.id WHERE k.slug = %s", (slug,)).fetchone()[0]
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not come back")


def recovery_seconds(slug: str, after: float, timeout: float = 60.0) -> float:
    """Seconds from ``after`` until the stored vote count grows again (annotators got through)."""
    base = progress_count(slug)
    while time.monotonic() - after < timeout:
        if progress_count(slug) > base:
            return time.monotonic() - after
        time.sleep(0.1)
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 annotators, 45 s (+ --celery-seconds), 1500 pairs (3000 with celery)")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=90.0, help="load for the web scenarios (s)")
    ap.add_argument("--comparisons", type=int, default=3000)
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between one annotator's cycles (0: zero think time)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--db", default=load.DEFAULT_DB)
    ap.add_argument("--broker", default=load.BROKER, help="the server's and Celery workers' Redis broker")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    celery_faults.add_arguments(ap)
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    if not only or set(only) - set(SCENARIOS):
        ap.error(f"--only takes some of {', '.join(SCENARIOS)}")
    web = [s for s in SCENARIOS[:3] if s in only]
    if args.quick:  # the Celery scenarios take minutes: enough pairs for the load to last
        args.users, args.seconds, args.comparisons = 10, 45.0, 3000 if "celery" in only else 1500
    seconds = (args.seconds if web else 0.0) + (args.celery_seconds if "celery" in only else 0.0)
    os.environ["CELERY_BROKER_URL"] = load.BROKER = args.broker  # this process's Django and load.server's
    load.setup_django(args.db)
    port = free_port()
    slug, tokens = load.make_run(args.users, args.comparisons)
    from django.db import connections

    from annotation.models import Campaign

    Campaign.objects.filter(slug=slug).update(buffer_size=0)  # Celery samples for its own campaign, not the annotators'
    faults: list[tuple[str, float]] = []
    celery_fields: dict = {}
    celery_lines: list[str] = []
    ctx: dict = {}  # the Celery scenarios' workers and rows
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if "celery" in only:
                celery_faults.prepare(args, Path(tmp), ctx)
            connections.close_all()  # this process's connection would not survive the restart either
            proc = load.server(args, port, args.db, Path(tmp) / "gunicorn.log")
            tokens_file = Path(tmp) / "tokens.json"
            tokens_file.write_text(json.dumps(tokens))
            result: dict = {}
            runner = threading.Thread(daemon=True, target=lambda: result.update(harness.run_child(
                load.__file__, ["--child", f"http://127.0.0.1:{port}", str(tokens_file), slug, str(seconds), str(args.pace), "retry"],
                cwd=str(ROOT))))
            runner.start()
            t_load = time.monotonic()
            try:
                step = args.seconds / 6
                if web:
                    time.sleep(step)
                if "gunicorn" in only:
                    for _ in range(3):  # SIGKILL half the web workers, three times
                        t = time.monotonic()
                        for pid in gunicorn_workers(proc.pid)[: max(1, args.workers // 2)]:
                            os.kill(pid, signal.SIGKILL)
                        faults.append(("gunicorn workers SIGKILL", recovery_seconds(slug, t)))
                        time.sleep(step / 3)
                if "redis" in only:
                    time.sleep(step / 2)
                    t = time.monotonic()
                    redis_restart()
                    faults.append(("Redis restart", recovery_seconds(slug, t)))
                if "postgres" in only:
                    time.sleep(step)
                    t = time.monotonic()
                    postgres_restart()
                    faults.append(("PostgreSQL restart", recovery_seconds(slug, t)))
                if "celery" in only:
                    votes = progress_count(slug)
                    celery_fields, celery_lines = celery_faults.run(ctx, args, f"http://127.0.0.1:{port}")
                    celery_lines.append(f"{'annotators meanwhile':<26} {progress_count(slug) - votes} votes stored during the "
                                        f"Celery faults, which ended {time.monotonic() - t_load:.0f} s into the {seconds:.0f} s load")
                runner.join()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        finally:
            celery_faults.cleanup(ctx, args)
    connections.close_all()
    c = load.check(slug, result.get("acknowledged", []))
    for name, s in faults:
        print(f"{name:<26} serving again after {s:.2f} s", flush=True)
    for line in celery_lines:
        print(line, flush=True)
    print(f"{result.get('cycles', 0)} cycles in {result.get('elapsed_s', 0):.0f} s, {result.get('n_errors', 0)} errors seen by "
          f"annotators (retried); stored {c['stored']}, acknowledged {c['acknowledged']}, acknowledged but lost {c['lost']}, "
          f"stored without an answer {c['unacknowledged_stored']}, over overlap {c['over_overlap']}, duplicates {c['duplicates']}, "
          f"comparisons whose count of active leases is wrong {c['leased_miscounted']}; "
          f"first errors: {result.get('errors', [])[:3]}", flush=True)
    fields = {"lost_votes": c["lost"], "duplicates": c["duplicates"], "over_overlap": c["over_overlap"],
              "leased_miscounted": c["leased_miscounted"]}
    if faults:
        fields["recovery_s_max"] = round(max(s for _, s in faults), 2)
    fields.update(errors=result.get("n_errors", 0), unacknowledged_stored=c["unacknowledged_stored"], **celery_fields)
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
