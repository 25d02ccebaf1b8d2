"""manage.py backup / restore: round trips on PostgreSQL (this test database) and on the embedded
SQLite default (a real manage.py in a subprocess), and refusals that change nothing."""

import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Campaign, Comparison, Vote
from annotation.services.votes import vote_submit
from tests.factories import CampaignFactory, ComparisonFactory, UserFactory
from tests.processes import ROOT, base_env


def _state():
    return (sorted(Campaign.objects.values_list("slug", "name")), Comparison.objects.count(),
            sorted(Vote.objects.values_list("comparison_id", "choice")))


@pytest.mark.django_db(transaction=True)
def test_postgres_round_trip_restores_every_row(tmp_path):
    from annotation import roles
    from annotation.services import assignment_next

    campaign = CampaignFactory(slug="keep", name="Before")
    for _ in range(3):
        ComparisonFactory(campaign=campaign)
    annotator = UserFactory(role=roles.ANNOTATOR)
    _add_member(campaign, annotator)
    lease = assignment_next(campaign=campaign, annotator=annotator)
    vote_submit(assignment_id=lease.pk, annotator=annotator, choice="a")
    before = _state()
    out = tmp_path / "db.dump"
    call_command("backup", output=str(out))
    assert out.read_bytes()[:5] == b"PGDMP"

    Vote.objects.all().delete()
    Campaign.objects.filter(slug="keep").update(name="After")
    CampaignFactory(slug="added-later")
    assert _state() != before

    call_command("restore", str(out), yes=True)
    assert _state() == before
    lease_again = assignment_next(campaign=Campaign.objects.get(slug="keep"), annotator=annotator)  # the app still works
    assert lease_again is not None and lease_again.comparison_id != lease.comparison_id


@pytest.mark.django_db(transaction=True)
def test_restore_refuses_a_foreign_file_and_an_unconfirmed_run_and_changes_nothing(tmp_path):
    CampaignFactory(slug="stays")
    before = _state()
    bogus = tmp_path / "not-a-dump.dump"
    bogus.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(CommandError, match="not a pg_dump"):
        call_command("restore", str(bogus), yes=True)
    with pytest.raises(CommandError, match="--yes"):
        call_command("restore", str(bogus))  # stdin is not a terminal under pytest
    with pytest.raises(CommandError, match="no such file"):
        call_command("restore", str(tmp_path / "missing.dump"), yes=True)
    assert _state() == before


def _add_member(campaign, user):
    """Campaign membership where this checkout has it (annotators lease only in their campaigns)."""
    try:
        from annotation.services import campaign_members_add
    except ImportError:
        return
    campaign_members_add(campaign=campaign, users=[user], added_by=None)


@pytest.mark.slow
def test_sqlite_round_trip_through_manage_py(tmp_path):
    """The embedded default (no DATABASE_URL): migrate, write, back up, change, restore."""
    env = base_env(PREFLOOP_VAR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="webapp.settings.local")
    for key in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(key, None)

    def manage(*args):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def slugs():
        out = manage("shell", "--no-imports", "-c",
                     "from annotation.models import Campaign; print(sorted(Campaign.objects.values_list('slug', flat=True)))")
        return out.splitlines()[-1]

    manage("migrate", "--verbosity", "0")
    manage("shell", "-c", "from annotation.models import Campaign; Campaign.objects.create(slug='one', name='One')")
    path = manage("backup", "-o", str(tmp_path / "db.sqlite3"))
    assert open(path, "rb").read(16) == b"SQLite format 3\x00"
    manage("shell", "-c", "from annotation.models import Campaign; Campaign.objects.create(slug='two', name='Two')")
    assert slugs() == "['one', 'two']"
    manage("restore", path, "--yes")
    assert slugs() == "['one']"
