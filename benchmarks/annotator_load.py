"""Annotators over real HTTP against the production server on PostgreSQL: next + vote cycles/s,
per-call latency percentiles, errors, and after every run the check that the database holds
exactly the acknowledged votes (no duplicates, no comparison over its overlap, each comparison's
count of active leases equal to its active leases).

- Server: gunicorn as docker-compose runs it (``webapp.wsgi``, production settings, the pool of
  PREFLOOP_DB_POOL_SIZE connections per process; ``--workers 4 --worker-class gthread --threads 4``
  by default, as webapp/gunicorn.conf.py; ``--worker-class sync`` to compare).
- Load: locust (FastHttpUser, gevent) in its own process, N annotators with their own API
  tokens, zero think time, looping ``POST next`` -> ``POST vote`` until the campaign runs dry
  (or ``--max-seconds``); ``--combined``: one request per cycle, each vote asking for the next
  lease (``"next": true``); ``--pace S``: each annotator does one cycle every ~S seconds
  (exponential think time), for ``--pace-seconds``.
- Data: per run a new campaign (votes_per_pair 3) of ``--comparisons`` pairs and N new members.

    python benchmarks/annotator_load.py [--quick] [--users 1,10,50,100] [--comparisons 2000]
        [--pace-users 1000 --pace 5] [--worker-class sync|gthread] [--workers 4] [--threads 4] [--combined]
        [--db postgres://postgres@127.0.0.1:5432/prefloop_load] [--floor]

``--floor``: after the runs, the server's floor at the largest N (requests/s of calls that do
none of our work: ``FLOORS``), which bounds cycles/s from above.

Last line: ``RESULT cycles_per_s_n1=... cycles_per_s_n100=... [floor_django_requests_per_s=...
floor_drf_requests_per_s=...] errors=... lost_votes=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import harness  # noqa: E402
from tests.processes import free_port, wait_for  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/prefloop_load"
BROKER = "redis://127.0.0.1:6379/9"


# ---------------------------------------------------------------- the load generator (child process)


def child(host: str, tokens_file: str, slug: str, max_seconds: float, pace: float, retry: bool = False,
          combined: bool = False) -> dict:
    """Locust users in this process; returns counts, acknowledged vote ids and latencies.
    ``retry``: an error (a refused connection, a 5xx while a fault is injected) is counted and
    the annotator tries again after 0.2 s, as a person would, instead of stopping.
    ``combined``: one request per cycle, the vote asking for the next lease (``"next": true``);
    ``next`` is called only for the first lease (and after a vote that brought none)."""
    import gevent
    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment
    from locust.exception import StopUser

    tokens = json.loads(Path(tokens_file).read_text())
    queue = list(tokens)
    acknowledged: list[int] = []
    errors: list[str] = []
    cycles = [0]
    rng = random.Random(0)

    class Annotator(FastHttpUser):
        # paced: exponential think time between cycles (between tasks, so a stop lets the
        # cycle in flight finish and be counted)
        wait_time = (lambda self: rng.expovariate(1.0 / pace)) if pace else constant(0)

        def on_start(self):
            self.token = queue.pop()
            self.headers = {"Authorization": f"Token {self.token}"}
            self.item = self.done = None

        @task
        def cycle(self):
            if self.done:
                raise StopUser()
            item, self.item = self.item, None
            if item is None:
                with self.client.post(f"/api/campaigns/{slug}/next/", headers=self.headers, name="next", catch_response=True) as r:
                    if r.status_code != 200:
                        errors.append(f"next {r.status_code} {(r.text or '')[:200]}")
                        r.failure(f"status {r.status_code}")
                        return self.failed()
                    item = r.json()["assignment"]
                if item is None:
                    raise StopUser()
            body = {"choice": rng.choice(["a", "b", "tie", "both_bad"]), "seconds_spent": 1.0, **({"next": True} if combined else {})}
            with self.client.post(f"/api/assignments/{item['id']}/vote/", json=body, headers=self.headers,
                                  name="vote+next" if combined else "vote", catch_response=True) as v:
                if v.status_code not in (200, 201):
                    errors.append(f"vote {v.status_code} {(v.text or '')[:200]}")
                    v.failure(f"status {v.status_code}")
                    return self.failed()
                answer = v.json()
                acknowledged.append(answer["vote_id"])
                if combined and answer.get("next"):
                    self.item = answer["next"]["assignment"]
                    self.done = self.item is None
            cycles[0] += 1

        def failed(self):
            if not retry:
                raise StopUser()
            gevent.sleep(0.2)

    env = Environment(user_classes=[Annotator], host=host, events=events, stop_timeout=60)
    runner = env.create_local_runner()
    t0 = time.perf_counter()
    runner.start(len(tokens), spawn_rate=max(len(tokens), 1))
    deadline = t0 + max_seconds
    while time.perf_counter() < deadline:
        gevent.sleep(0.2)
        if runner.user_count == 0 and time.perf_counter() - t0 > 1:
            break
    runner.stop()  # waits (stop_timeout) for the cycles in flight
    elapsed = time.perf_counter() - t0
    runner.quit()
    stats = {}
    for name in ("next", "vote", "vote+next"):
        s = env.stats.get(name, "POST")
        if not s.num_requests:
            continue
        stats[name] = {"n": s.num_requests, "failures": s.num_failures,
                       **{f"p{q}": s.get_response_time_percentile(q / 100) for q in (50, 95, 99)}}
    return {"cycles": cycles[0], "elapsed_s": elapsed, "acknowledged": acknowledged, "errors": errors[:10],
            "n_errors": len(errors), "calls": stats}


FLOORS = {
    # Django's middleware and URL resolver, the JSON 404 of an unknown API path: no DRF, no database
    "django": ("/api/no-such-endpoint/", False),
    # what a vote does before it reads its lease: DRF, token authentication with the user's
    # permissions (one query), the rate limit (Redis), the body's validation: {} is a 400
    "drf": ("/api/assignments/1/vote/", True),
}


def floor_child(host: str, tokens_file: str, seconds: float, kind: str) -> dict:
    """The server's floor: N users (one per token) each looping one request that does no work of
    ours (``FLOORS[kind]``, a JSON 404 or 400), zero think time. A cycle is such a request plus the work
    of a vote and a lease, so this bounds cycles/s from above."""
    path, auth = FLOORS[kind]
    import gevent
    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment

    queue = list(json.loads(Path(tokens_file).read_text()))
    done, bad = [0], [0]

    class Caller(FastHttpUser):
        wait_time = constant(0)

        def on_start(self):
            token = queue.pop()
            self.headers = {"Authorization": f"Token {token}"} if auth else {}

        @task
        def call(self):
            call = self.client.post(path, json={}, headers=self.headers, name="floor", catch_response=True) if auth else \
                self.client.get(path, headers=self.headers, name="floor", catch_response=True)
            with call as r:
                if r.status_code == (400 if auth else 404):
                    r.success()
                    done[0] += 1
                else:
                    bad[0] += 1
                    r.failure(f"status {r.status_code}")

    env = Environment(user_classes=[Caller], host=host, events=events, stop_timeout=10)
    runner = env.create_local_runner()
    runner.start(len(queue), spawn_rate=len(queue))
    gevent.sleep(2)  # every user started and warm
    n0, t0 = done[0], time.perf_counter()
    gevent.sleep(seconds)
    n, elapsed = done[0] - n0, time.perf_counter() - t0
    runner.stop()
    runner.quit()
    return {"requests_per_s": n / elapsed, "errors": bad[0]}


# ---------------------------------------------------------------- setup and checks (this process, Django)


def setup_django(db_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings.test"  # fast password hashing for the setup
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import django
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            c.execute(f'CREATE DATABASE "{name}"')
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_run(n_users: int, n_comparisons: int) -> tuple[str, list[str]]:
    from rest_framework.authtoken.models import Token

    from annotation import services
    from benchmarks.assignment_load import make_campaign

    slug = f"load-{n_users}-{uuid.uuid4().hex[:8]}"
    campaign, users = make_campaign(slug=slug, n_comparisons=n_comparisons, n_annotators=n_users, votes_per_pair=3)
    type(campaign).objects.filter(pk=campaign.pk).update(buffer_size=0)  # its pairs are all made here: nothing to sample
    if hasattr(services, "campaign_members_add"):  # campaign membership: annotators vote only in their campaigns
        services.campaign_members_add(campaign=campaign, users=users, added_by=None)
    return slug, [Token.objects.create(user=u).key for u in users]


def check(slug: str, acknowledged: list[int]) -> dict:
    from django.db.models import Count, F, Q

    from annotation.models import Comparison, Vote

    votes = Vote.objects.filter(comparison__campaign__slug=slug)
    stored = set(votes.values_list("pk", flat=True))
    over = Comparison.objects.filter(campaign__slug=slug).annotate(n=Count("votes")).filter(n__gt=3).count()
    dups = votes.values("comparison", "annotator").annotate(n=Count("pk")).filter(n__gt=1).count()
    # each comparison's count of active leases (what "full" reads) against its leases
    miscounted = (Comparison.objects.filter(campaign__slug=slug).annotate(active=Count("assignments", filter=Q(assignments__state="active")))
                  .exclude(leased=F("active")).count())
    return {"stored": len(stored), "acknowledged": len(acknowledged), "lost": len(set(acknowledged) - stored),
            "unacknowledged_stored": len(stored - set(acknowledged)), "over_overlap": over, "duplicates": dups,
            "leased_miscounted": miscounted}


def server(args, port: int, db_url: str, log: Path):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="webapp.settings.production", SECRET_KEY="load-benchmark-only",
               ALLOWED_HOSTS="127.0.0.1,localhost", DATABASE_URL=db_url, CELERY_BROKER_URL=BROKER, SECURE_SSL_REDIRECT="0",
               PYTHONUNBUFFERED="1",
               # zero think time is a script by design here: the per-user limit (still counted) must not stop it
               PREFLOOP_ANNOTATE_RATE="1000000/min")
    cmd = [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{port}",
           "--workers", str(args.workers), "--timeout", "120", "--worker-class", args.worker_class]
    if args.worker_class == "gthread":
        cmd += ["--threads", str(args.threads)]
    out = log.open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    import urllib.request

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/schema/", timeout=2)
        except urllib.error.HTTPError:
            return True  # answering (401 without a token)
        except OSError:
            return False
        return True

    wait_for(up, timeout=60, what="gunicorn", proc=proc, log=log)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1 and 10, 300 comparisons, a 20 s paced run of 100")
    ap.add_argument("--users", default="1,10,50,100")
    ap.add_argument("--comparisons", type=int, default=2000)
    ap.add_argument("--pace-users", type=int, default=1000, help="annotators of the paced run (0: none)")
    ap.add_argument("--pace", type=float, default=5.0, help="seconds between one annotator's cycles in the paced run")
    ap.add_argument("--pace-seconds", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--worker-class", default="gthread", choices=["sync", "gthread"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--db", default=DEFAULT_DB)
    ap.add_argument("--combined", action="store_true",
                    help="one request per cycle: each vote asks for the next lease (\"next\": true)")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the server's floor at the largest N: requests/s of calls that do no work of ours (a "
                    "JSON 404 through Django alone; a vote refused at validation through DRF with a token), the most "
                    "cycles/s could reach")
    ap.add_argument("--floor-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    if args.floor_child:
        host, tokens, seconds, kind = args.floor_child
        harness.child_report(floor_child(host, tokens, float(seconds), kind))
        return
    if args.child:
        host, tokens, slug, max_s, pace, *retry = args.child
        harness.child_report(child(host, tokens, slug, float(max_s), float(pace), retry=bool(retry), combined=args.combined))
        return
    if args.quick:
        args.users, args.comparisons, args.pace_users, args.pace_seconds = "1,10", 300, 100, 20.0
    harness.require_idle(args)
    setup_django(args.db)
    port = free_port()
    fields: dict = {}
    lost = errors = unacked = 0
    with tempfile.TemporaryDirectory() as tmp:
        proc = server(args, port, args.db, Path(tmp) / "gunicorn.log")
        try:
            plan = [(int(n), 0.0, args.max_seconds) for n in args.users.split(",")]
            if args.pace_users:
                plan.append((args.pace_users, args.pace, args.pace_seconds))
            print(f"gunicorn {args.worker_class} x{args.workers}" + (f" ({args.threads} threads)" if args.worker_class == "gthread" else "")
                  + f", PostgreSQL, {args.comparisons} comparisons per run", flush=True)
            for n, pace, max_s in plan:
                # a paced run needs enough pairs for its length: ~1 cycle per pace seconds per annotator
                pairs = args.comparisons if not pace else max(args.comparisons, int(n * max_s / pace / 3 * 1.5) + 1)
                slug, tokens = make_run(n, pairs)
                tokens_file = Path(tmp) / f"{slug}.json"
                tokens_file.write_text(json.dumps(tokens))
                r = harness.run_child(__file__, ["--child", f"http://127.0.0.1:{port}", str(tokens_file), slug, str(max_s), str(pace),
                                                 *(["--combined"] if args.combined else [])], cwd=str(ROOT))
                c = check(slug, r["acknowledged"])
                lost += c["lost"]
                unacked += c["unacknowledged_stored"]
                errors += r["n_errors"]
                rate = r["cycles"] / r["elapsed_s"]
                label = f"N={n}" + (f" paced {pace:g}s" if pace else "")
                calls = "  ".join(f"{name} {st['p50']:.0f}/{st['p95']:.0f}/{st['p99']:.0f} ms" for name, st in r["calls"].items())
                print(f"{label:<16} {rate:7.1f} cycles/s  p50/p95/p99: {calls}  errors {r['n_errors']}  stored {c['stored']} = "
                      f"acknowledged {c['acknowledged']}: {c['lost'] == 0 and c['unacknowledged_stored'] == 0}  over overlap "
                      f"{c['over_overlap']}  duplicates {c['duplicates']}  leases miscounted {c['leased_miscounted']}" + (f"  first errors {r['errors'][:2]}" if r["errors"] else ""),
                      flush=True)
                key = f"n{n}" + ("_paced" if pace else "")
                fields[f"cycles_per_s_{key}"] = round(rate, 1)
                if pace:
                    fields[f"p99_ms_{key}"] = max(st["p99"] for st in r["calls"].values())
            if args.floor:
                n = max(int(n) for n in args.users.split(","))
                _slug, tokens = make_run(n, 1)
                tokens_file = Path(tmp) / "floor.json"
                tokens_file.write_text(json.dumps(tokens))
                for kind, (path, auth) in FLOORS.items():
                    r = harness.run_child(__file__, ["--floor-child", f"http://127.0.0.1:{port}", str(tokens_file), "20", kind],
                                          cwd=str(ROOT))
                    print(f"floor {kind:<6} N={n}: {r['requests_per_s']:7.1f} requests/s of " + (f"POST {path} {{}} with a token (a 400)" if auth
                          else f"GET {path} (a 404)") + f"  errors {r['errors']}", flush=True)
                    fields[f"floor_{kind}_requests_per_s"] = round(r["requests_per_s"], 1)
                    errors += r["errors"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    fields.update(errors=errors, lost_votes=lost, unacknowledged_stored=unacked)
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
