"""20 annotators at once on one campaign, on PostgreSQL and on the embedded SQLite default:
no comparison over its overlap, no annotator twice on a comparison, no vote lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.assignment_load import make_campaign, run_load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def assert_guarantees(report, *, votes_per_pair=3):
    assert report["errors"] == []
    assert report["max_votes_on_a_comparison"] <= votes_per_pair
    assert report["duplicate_annotator_votes"] == 0
    assert report["accepted_votes"] == report["stored_votes"] == report["cycles"]  # no vote lost
    assert report["counter_matches_rows"]
    # Every comparison got exactly its overlap: all the work was handed out and done.
    assert report["stored_votes"] == report["comparisons"] * votes_per_pair
    assert report["complete"] == report["comparisons"] and report["min_votes_on_a_comparison"] == votes_per_pair


@pytest.mark.django_db(transaction=True)
def test_twenty_annotators_on_postgresql():
    from django.db import connection

    assert connection.vendor == "postgresql"
    campaign, users = make_campaign(slug="conc", n_comparisons=40, n_annotators=20, votes_per_pair=3)
    report = run_load(campaign=campaign, users=users)
    assert report["vendor"] == "postgresql"
    assert_guarantees(report)


def test_twenty_annotators_on_embedded_sqlite(tmp_path):
    env = {**os.environ, "PREFLOOP_VAR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "webapp.settings.local"}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    out = subprocess.run(
        [sys.executable, "benchmarks/assignment_load.py", "--repeats", "1", "--force", "--comparisons", "40", "--annotators", "20",
         "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    report = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    assert report["vendor"] == "sqlite" and report["annotators"] == 20
    assert (tmp_path / "prefloop.sqlite3").exists()  # the embedded default file, not another DB
    assert_guarantees(report)
