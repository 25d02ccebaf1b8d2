"""Faults while annotators vote: gunicorn workers SIGKILLed, Redis restarted, PostgreSQL
restarted, all during a zero-think-time load over real HTTP (``annotator_load.py``'s server and
locust users, who retry after an error as a person would). Afterwards: acknowledged votes
lost (must be 0), duplicates (0), comparisons over their overlap (0), and for each fault how
long until annotators completed a cycle again.

    python benchmarks/annotator_faults.py [--quick] [--users 20] [--seconds 90]

Restarts this machine's Redis and PostgreSQL (``redis-server`` on 6379 with nothing kept on
disk; ``pg_ctlcluster``): run it where nothing else uses them. Not covered yet: SIGKILL of a
Celery worker in the middle of ``sample_pairs`` and of a training run (the sweeps that recover
those are tested in tests/test_loop_upkeep.py).

Last line: ``RESULT lost_votes=0 duplicates=0 over_overlap=0 recovery_s_max=... errors=...``.
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
from benchmarks import harness  # noqa: E402
from tests.processes import free_port  # noqa: E402


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
    ap.add_argument("--quick", action="store_true", help="10 annotators, 45 s")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--comparisons", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--db", default=load.DEFAULT_DB)
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    if args.quick:
        args.users, args.seconds, args.comparisons = 10, 45.0, 1500
    load.setup_django(args.db)
    port = free_port()
    slug, tokens = load.make_run(args.users, args.comparisons)
    from django.db import connections

    connections.close_all()  # this process's connection would not survive the restart either
    faults: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = load.server(args, port, args.db, Path(tmp) / "gunicorn.log")
        tokens_file = Path(tmp) / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(harness.run_child(
            load.__file__, ["--child", f"http://127.0.0.1:{port}", str(tokens_file), slug, str(args.seconds), "0", "retry"],
            cwd=str(ROOT))))
        runner.start()
        try:
            step = args.seconds / 6
            time.sleep(step)
            for _ in range(3):  # SIGKILL half the web workers, three times
                t = time.monotonic()
                for pid in gunicorn_workers(proc.pid)[: max(1, args.workers // 2)]:
                    os.kill(pid, signal.SIGKILL)
                faults.append(("gunicorn workers SIGKILL", recovery_seconds(slug, t)))
                time.sleep(step / 3)
            time.sleep(step / 2)
            t = time.monotonic()
            redis_restart()
            faults.append(("Redis restart", recovery_seconds(slug, t)))
            time.sleep(step)
            t = time.monotonic()
            postgres_restart()
            faults.append(("PostgreSQL restart", recovery_seconds(slug, t)))
            runner.join()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    c = load.check(slug, result.get("acknowledged", []))
    for name, s in faults:
        print(f"{name:<26} serving again after {s:.2f} s", flush=True)
    print(f"{result.get('cycles', 0)} cycles in {result.get('elapsed_s', 0):.0f} s, {result.get('n_errors', 0)} errors seen by "
          f"annotators (retried); stored {c['stored']}, acknowledged {c['acknowledged']}, acknowledged but lost {c['lost']}, "
          f"stored without an answer {c['unacknowledged_stored']}, over overlap {c['over_overlap']}, duplicates {c['duplicates']}; "
          f"first errors: {result.get('errors', [])[:3]}", flush=True)
    print(harness.result_line({"lost_votes": c["lost"], "duplicates": c["duplicates"], "over_overlap": c["over_overlap"],
                               "recovery_s_max": round(max(s for _, s in faults), 2), "errors": result.get("n_errors", 0),
                               "unacknowledged_stored": c["unacknowledged_stored"]}))


if __name__ == "__main__":
    main()
