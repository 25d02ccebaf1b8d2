"""Concurrent annotators through the full API stack: guarantees and next+vote cycles/s.

N threads, each a different annotator with its own API client and database connection, loop
"POST next -> POST vote" on one campaign until no work is left. Afterwards the database is
checked: no comparison over its overlap, no annotator twice on a comparison, no vote lost.

    python benchmarks/assignment_load.py --db sqlite:////tmp/load.sqlite3 [--quick]
    python benchmarks/assignment_load.py --db postgres://postgres@127.0.0.1:5432/prefloop_bench
    python benchmarks/assignment_load.py --db sqlite:////tmp/load.sqlite3 --db postgres://... [--repeats 5]

Each run is its own process (a fresh Django set up on that database, a new campaign); with
several ``--db`` the runs are interleaved (``benchmarks/harness.py``, which also refuses a busy
machine) and the RESULT gives each database's median cycles/s with its min-max. CPU time is
this process's (client + Django; PostgreSQL's server processes are not in it).

Peer (recorded in issue 2, not run here): Label Studio 1.23 on its SQLite default gave tasks
4-7 annotations against an overlap of 3 with 10 concurrent annotators; best 7.7 cycles/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

LABEL_STUDIO_CYCLES_PER_S = 7.7

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness  # noqa: E402


def setup_django(db_url: str | None) -> None:
    if db_url:
        os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    import django

    django.setup()


def make_campaign(*, slug: str, n_comparisons: int, n_annotators: int, votes_per_pair: int):
    """A new campaign with ``n_comparisons`` open pairs and ``n_annotators`` new annotators."""
    from annotation import roles, services
    from annotation.models import Response

    campaign = services.campaign_create(slug=slug, name=slug, guideline="Pick the better one.", votes_per_pair=votes_per_pair)
    for i in range(n_comparisons):
        prompt, _ = services.prompt_get_or_create(campaign=campaign, messages=[{"role": "user", "content": f"Question {i}?"}])
        a = services.response_get_or_create_text(prompt=prompt, text=f"Answer {i} one.", source=Response.Source.HUMAN)
        b = services.response_get_or_create_text(prompt=prompt, text=f"Answer {i} two.", source=Response.Source.HUMAN)
        services.comparison_create(campaign=campaign, prompt=prompt, response_a=a, response_b=b)
    users = [
        roles.user_create(username=f"{slug}-ann{i}", password="load-test-pw-123", role=roles.ANNOTATOR)
        for i in range(n_annotators)
    ]
    services.campaign_members_add(campaign=campaign, users=users, added_by=None)  # annotators work only in their campaigns
    return campaign, users


def run_load(*, campaign, users, seed: int = 0) -> dict:
    """Run the annotators concurrently; return counts, timings and the invariant checks."""
    from django.db import connection
    from django.db.models import Count
    from rest_framework.test import APIClient

    from annotation.models import Comparison, Vote

    barrier = threading.Barrier(len(users))
    stats = {"cycles": 0, "errors": [], "accepted_votes": 0}
    lock = threading.Lock()

    def annotator(user, i):
        rng = random.Random(seed * 1000 + i)
        client = APIClient(HTTP_HOST="localhost")
        client.force_authenticate(user)
        cycles = accepted = 0
        errors = []
        try:
            barrier.wait()
            while True:
                r = client.post(f"/api/campaigns/{campaign.slug}/next/")
                if r.status_code != 200:
                    errors.append(("next", r.status_code, r.content[:200]))
                    break
                item = r.json()["assignment"]
                if item is None:
                    break
                v = client.post(
                    f"/api/assignments/{item['id']}/vote/",
                    {"choice": rng.choice(["a", "b", "tie", "both_bad"]), "seconds_spent": 1.0},
                    format="json",
                )
                cycles += 1
                if v.status_code == 201:
                    accepted += 1
                else:  # a refused vote leaves the lease held: stop this annotator, report it
                    errors.append(("vote", v.status_code, v.content[:200]))
                    break
        finally:
            connection.close()
            with lock:
                stats["cycles"] += cycles
                stats["accepted_votes"] += accepted
                stats["errors"] += errors

    threads = [threading.Thread(target=annotator, args=(u, i)) for i, u in enumerate(users)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0

    comparisons = Comparison.objects.filter(campaign=campaign)
    votes = Vote.objects.filter(comparison__campaign=campaign)
    per_comparison = list(comparisons.values_list("vote_count", flat=True))
    actual = dict(votes.values("comparison").annotate(n=Count("pk")).values_list("comparison", "n"))
    dup_pairs = votes.values("comparison", "annotator").annotate(n=Count("pk")).filter(n__gt=1).count()
    return {
        "annotators": len(users),
        "comparisons": comparisons.count(),
        "votes_per_pair": campaign.votes_per_pair,
        "cycles": stats["cycles"],
        "elapsed_s": round(elapsed, 3),
        "cycles_per_s": round(stats["cycles"] / elapsed, 2),
        "cpu_ms_per_cycle": round(cpu / max(1, stats["cycles"]) * 1000, 2),
        "accepted_votes": stats["accepted_votes"],
        "stored_votes": votes.count(),
        "max_votes_on_a_comparison": max(actual.values(), default=0),
        "counter_matches_rows": all(actual.get(c.pk, 0) == c.vote_count for c in comparisons),
        "duplicate_annotator_votes": dup_pairs,
        "complete": comparisons.filter(status="complete").count(),
        "min_votes_on_a_comparison": min(per_comparison, default=0),
        "errors": [str(e) for e in stats["errors"][:5]],
        "vendor": connection.vendor,
    }


def one_run(args) -> dict:
    """One run in this process, on ``args.child_db``: a new campaign, the load, the checks."""
    setup_django(args.child_db or None)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    campaign, users = make_campaign(
        slug=f"load-{uuid.uuid4().hex[:8]}", n_comparisons=args.comparisons, n_annotators=args.annotators, votes_per_pair=args.votes_per_pair
    )
    report = run_load(campaign=campaign, users=users, seed=args.seed)
    report["guarantees_hold"] = (
        report["max_votes_on_a_comparison"] <= args.votes_per_pair
        and report["duplicate_annotator_votes"] == 0
        and report["accepted_votes"] == report["stored_votes"]
        and report["counter_matches_rows"]
        and not report["errors"]
        and report["stored_votes"] == report["comparisons"] * args.votes_per_pair  # all work done
    )
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", action="append", help="DATABASE_URL; repeat to interleave databases (default: the embedded SQLite default)")
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--comparisons", type=int, default=100)
    p.add_argument("--votes-per-pair", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 round, 30 comparisons")
    p.add_argument("--json", action="store_true", help="print each run's report as JSON")
    p.add_argument("--child-db", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    harness.add_arguments(p, repeats=5)
    args = p.parse_args(argv)
    if args.child_db is not None:
        harness.child_report(one_run(args))
        return
    if args.quick:
        args.repeats, args.comparisons = 1, 30
    harness.require_idle(args)
    dbs = args.db or [""]
    rates: dict[str, list[float]] = {db: [] for db in dbs}
    cpu: dict[str, list[float]] = {db: [] for db in dbs}
    vendor: dict[str, str] = {}
    common = ["--annotators", str(args.annotators), "--comparisons", str(args.comparisons), "--votes-per-pair", str(args.votes_per_pair)]
    for run, db in harness.rounds(dbs, args.repeats):
        report = harness.run_child(__file__, ["--child-db", db, "--seed", str(run), *common])
        vendor[db] = report["vendor"]
        rates[db].append(report["cycles_per_s"])
        cpu[db].append(report["cpu_ms_per_cycle"])
        ok = report["guarantees_hold"]
        print(json.dumps(report) if args.json else
              f"round {run} {report['vendor']:<10}: {report['cycles_per_s']} cycles/s, CPU {report['cpu_ms_per_cycle']} ms/cycle, "
              f"{report['stored_votes']} votes, guarantees {'hold' if ok else 'BROKEN'}", flush=True)
        if not ok:
            sys.exit(1)
    fields: dict = {"annotators": args.annotators}
    for i, db in enumerate(dbs):
        # One database: plain names; several: by vendor (by position when a vendor repeats).
        same_vendor = list(vendor.values()).count(vendor[db]) > 1
        prefix = "" if len(dbs) == 1 else f"db{i}_" if same_vendor else f"{vendor[db]}_"
        print(f"{vendor[db]}: {harness.fmt_spread(rates[db], 1)} cycles/s, CPU {harness.fmt_spread(cpu[db], 1)} ms/cycle (median, min-max)")
        fields.update(harness.median_fields(f"{prefix}cycles_per_s", rates[db]))
        fields[f"{prefix}ratio_vs_label_studio"] = harness.spread(rates[db])[0] / LABEL_STUDIO_CYCLES_PER_S
    if len(dbs) == 1:
        fields = {"db": vendor[dbs[0]], **fields}
    fields["guarantees_hold"] = 1
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
