"""Data migrations of issue 10 on PostgreSQL: a run's JSON list of metrics becomes TrainingMetric
rows; of several active runs of one campaign and kind only one stays active; and the models
match the migrations."""

import contextlib
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from annotation.models import TrainingMetric, TrainingRun



@contextlib.contextmanager
def migrated_back_to(name: str):
    """The database at annotation's migration ``name`` (its historical models' registry is
    yielded), then at the latest migrations again, whatever the block did."""
    target = [("annotation", name)]
    executor = MigrationExecutor(connection)
    latest = [("annotation", executor.loader.graph.leaf_nodes("annotation")[0][1])]
    executor.migrate(target)
    try:
        yield executor.loader.project_state(target).apps
    finally:
        MigrationExecutor(connection).migrate(latest)


def test_models_match_migrations(db):
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_metrics_json_to_rows_and_one_active_run_per_kind():
    with migrated_back_to("0003_runs_metrics_policies") as apps:
        Campaign, ModelVersion, Run = (apps.get_model("annotation", m) for m in ("Campaign", "ModelVersion", "TrainingRun"))
        campaign = Campaign.objects.create(slug="m", name="m")
        base = ModelVersion.objects.create(name="b", base="b")
        old_metrics = [
            {"step": 1, "loss": 0.7, "learning_rate": 1e-5, "note": "not a number"},
            {"step": 2, "loss": None},  # a NaN, stored as null by the old code
            {"step": 2, "eval_loss": 0.5},
            {"step": 2, "loss": 0.6},  # logged again after a resume: the last value wins
        ]
        done = Run.objects.create(kind="dpo", campaign=campaign, base_version=base, status="succeeded", metrics=old_metrics)
        queued_old = Run.objects.create(kind="dpo", campaign=campaign, base_version=base, status="queued")
        queued_new = Run.objects.create(kind="dpo", campaign=campaign, base_version=base, status="queued")
        running = Run.objects.create(kind="reward", campaign=campaign, base_version=base, status="running")
        queued_after_running = Run.objects.create(kind="reward", campaign=campaign, base_version=base, status="queued")
    rows = TrainingMetric.objects.filter(run_id=done.pk).order_by("step", "name").values_list("step", "name", "value")
    assert list(rows) == [(1, "learning_rate", 1e-5), (1, "loss", 0.7), (2, "eval_loss", 0.5), (2, "loss", 0.6)]
    assert TrainingRun.objects.get(pk=done.pk).step == 2
    status = dict(TrainingRun.objects.values_list("pk", "status"))
    assert status[queued_new.pk] == "queued" and status[running.pk] == "running"
    assert status[queued_old.pk] == status[queued_after_running.pk] == "cancelled"
    assert TrainingRun.objects.get(pk=queued_old.pk).error.startswith(f"Cancelled by migration 0004: run {queued_new.pk} ")


@pytest.mark.django_db(transaction=True)
def test_leases_get_their_comparisons_campaign():
    """0012 fills each lease's campaign from its comparison (issue 13: a campaign's live leases
    by their own index)."""
    from annotation.models import Assignment

    with migrated_back_to("0011_audit_log") as apps:
        Campaign, Prompt, Response, Comparison, Lease = (
            apps.get_model("annotation", m) for m in ("Campaign", "Prompt", "Response", "Comparison", "Assignment")
        )
        User = apps.get_model("auth", "User")
        made = {}
        for slug in ("m1", "m2"):
            campaign = Campaign.objects.create(slug=slug, name=slug)
            prompt = Prompt.objects.create(campaign=campaign, messages=[{"role": "user", "content": "q"}], messages_hash=slug)
            a, b = (Response.objects.create(prompt=prompt, text=t, text_hash=f"{slug}{t}") for t in "ab")
            comparison = Comparison.objects.create(campaign=campaign, prompt=prompt, response_a=a, response_b=b, votes_required=3)
            user = User.objects.create(username=f"u-{slug}")
            lease = Lease.objects.create(comparison=comparison, annotator=user, order="ab", leased_at="2026-01-01T00:00Z",
                                         expires_at="2026-01-01T00:30Z")
            made[lease.pk] = campaign.pk
    assert dict(Assignment.objects.filter(pk__in=made).values_list("pk", "campaign_id")) == made


@pytest.mark.django_db(transaction=True)
def test_comparisons_count_their_active_leases_and_expired_ones_end():
    """0013: each comparison's ``leased`` is its live leases; a lease already past its expiry is
    ended first (expired), so the count and the new overlap check start from the live ones."""
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import Assignment, Comparison

    now = timezone.now()
    with migrated_back_to("0012_assignment_campaign") as apps:
        Campaign, Prompt, Response, Pair, Lease = (
            apps.get_model("annotation", m) for m in ("Campaign", "Prompt", "Response", "Comparison", "Assignment")
        )
        User = apps.get_model("auth", "User")
        campaign = Campaign.objects.create(slug="m", name="m")
        prompt = Prompt.objects.create(campaign=campaign, messages=[{"role": "user", "content": "q"}], messages_hash="m")
        a, b, c = (Response.objects.create(prompt=prompt, text=t, text_hash=t) for t in "abc")
        # one slot: an expired lease, and the live one that took the slot back
        full = Pair.objects.create(campaign=campaign, prompt=prompt, response_a=a, response_b=b, votes_required=1)
        empty = Pair.objects.create(campaign=campaign, prompt=prompt, response_a=a, response_b=c, votes_required=3)
        users = [User.objects.create(username=f"u{i}") for i in range(3)]
        stale = Lease.objects.create(comparison=full, campaign=campaign, annotator=users[0], order="ab",
                                     leased_at=now - timedelta(minutes=30), expires_at=now - timedelta(minutes=15))
        live = Lease.objects.create(comparison=full, campaign=campaign, annotator=users[1], order="ab",
                                    leased_at=now, expires_at=now + timedelta(minutes=15))
        done = Lease.objects.create(comparison=empty, campaign=campaign, annotator=users[2], order="ab", state="done",
                                    leased_at=now, expires_at=now + timedelta(minutes=15))
    assert dict(Comparison.objects.filter(pk__in=[full.pk, empty.pk]).values_list("pk", "leased")) == {full.pk: 1, empty.pk: 0}
    assert dict(Assignment.objects.filter(pk__in=[stale.pk, live.pk, done.pk]).values_list("pk", "state")) == {
        stale.pk: "expired", live.pk: "active", done.pk: "done"}
