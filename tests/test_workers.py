"""A real Celery worker process: on Redis + PostgreSQL, and on the embedded default
(SQLite file + Celery filesystem transport) together with the web server."""

import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation.models import Assignment, Campaign, ModelVersion, Response
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, UserFactory
from tests.processes import ROOT, base_env, celery_worker, free_port, process, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.mark.django_db(transaction=True)
def test_worker_on_redis_and_postgresql_expires_leases(tmp_path):
    from workers.tasks import expire_leases

    now = timezone.now()
    comparison = ComparisonFactory()
    a = Assignment.objects.create(
        comparison=comparison, campaign=comparison.campaign, annotator=UserFactory(), order="ab",
        leased_at=now - timedelta(minutes=30), expires_at=now - timedelta(minutes=15),
    )
    type(comparison).objects.filter(pk=comparison.pk).update(leased=1)  # as a hand-out counts it
    queue = f"test-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    env = base_env(
        DJANGO_SETTINGS_MODULE="webapp.settings.test",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    )
    with celery_worker(env=env, log=tmp_path / "worker.log", queues=queue):
        expire_leases.apply_async(queue=queue)
        wait_for(
            lambda: Assignment.objects.get(pk=a.pk).state == Assignment.State.EXPIRED,
            timeout=60, what="the worker to expire the lease", log=tmp_path / "worker.log",
        )
    assert "workers.tasks.expire_leases" in (tmp_path / "worker.log").read_text()
    comparison.refresh_from_db()
    assert comparison.leased == 0


@pytest.mark.django_db(transaction=True)
def test_gpu_worker_fills_campaign_buffer_with_provenance(tmp_path, tiny_policy):
    """The beat task's body runs here; the sample_pairs it enqueues is routed to the `gpu`
    queue and run by a real worker, which fills the buffer from the campaign's policy."""
    import redis

    from workers.tasks import refill_buffers

    params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "batch_size": 4}
    campaign = CampaignFactory(buffer_size=5, sampling_params=params)
    for _ in range(3):
        PromptFactory(campaign=campaign)
    ComparisonFactory(campaign=campaign)  # one already open: 4 are missing
    redis.Redis.from_url("redis://127.0.0.1:6379/15").delete("gpu")  # nothing left over from other runs
    db = connection.settings_dict
    env = base_env(
        DJANGO_SETTINGS_MODULE="webapp.settings.test",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        PREFLOOP_DEFAULT_POLICY=tiny_policy,
    )
    log = tmp_path / "worker.log"
    with celery_worker(env=env, log=log, queues="gpu"):
        assert refill_buffers() == {campaign.pk: 4}
        wait_for(
            lambda: not Campaign.objects.filter(pk=campaign.pk, refill_requested_at__isnull=False).exists()
            and Campaign.objects.get(pk=campaign.pk).comparisons.filter(status="open").count() == 5,
            timeout=120, what="the gpu worker to finish the refill", log=log,
        )
    assert "workers.tasks.sample_pairs" in log.read_text() and "succeeded" in log.read_text()
    assert campaign.comparisons.filter(status="open").count() == 5
    campaign.refresh_from_db()
    assert campaign.policy == ModelVersion.objects.get(name=tiny_policy)
    sampled = Response.objects.filter(prompt__campaign=campaign, source="policy")
    assert sampled.count() == 8
    for r in sampled:
        assert r.model_version_id == campaign.policy_id and r.sampling_params == params
        assert r.seed is not None and r.token_count >= 1 and r.logprob_sum < 0 and r.finish_reason in ("stop", "length")
    assert refill_buffers() == {}  # buffer full


def test_embedded_default_sqlite_filesystem_transport(tmp_path, tiny_policy):
    """No DATABASE_URL, no CELERY_BROKER_URL: migrate, seed, sample, web and worker all run."""
    env = base_env(PREFLOOP_VAR=str(tmp_path), DJANGO_SETTINGS_MODULE="webapp.settings.local", PREFLOOP_DEFAULT_POLICY=tiny_policy)
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(key, None)

    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    manage("migrate", "--noinput", "-v0")
    seeded = manage("seed_demo")
    assert "Campaign 'demo': 58 prompts, 8 comparisons" in seeded and "alice" in seeded  # gold items only
    sampled = manage("sample_pairs", "--campaign", "demo", "--n", "2", "--seed", "3")
    assert "2 pair(s) sampled from " + tiny_policy in sampled
    seeded = manage("seed_demo", "--fixture-pairs")
    assert "Campaign 'demo': 58 prompts, 60 comparisons (50 new)" in seeded
    db = tmp_path / "prefloop.sqlite3"
    with sqlite3.connect(db) as con:
        comparisons = con.execute("select count(*) from annotation_comparison where kind='normal'").fetchone()[0]
        provenance = con.execute(
            "select count(*) from annotation_response r join annotation_modelversion m on r.model_version_id = m.id"
            " where m.name = ? and r.seed is not null and r.logprob_sum < 0", (tiny_policy,)
        ).fetchone()[0]
        user_id = con.execute("select id from auth_user where username='alice'").fetchone()[0]
        comparison_id, campaign_id = con.execute("select id, campaign_id from annotation_comparison limit 1").fetchone()
        con.execute(
            "insert into annotation_assignment (comparison_id, campaign_id, annotator_id, 'order', state, leased_at, expires_at,"
            " skip_reason) values (?, ?, ?, 'ab', 'active', '2020-01-01 00:00:00', '2020-01-01 00:15:00', '')",
            (comparison_id, campaign_id, user_id),
        )
        con.execute("update annotation_comparison set leased = leased + 1 where id = ?", (comparison_id,))  # as a hand-out counts it
    assert comparisons == 52 and provenance == 4

    port = free_port()
    with celery_worker(env=env, log=tmp_path / "worker.log", queues="default"), process(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=env, log=tmp_path / "web.log", ready="Quit the server",
    ):
        manage("shell", "-c", "from workers.tasks import expire_leases; expire_leases.delay()")

        def expired():
            with sqlite3.connect(db) as con:
                return con.execute("select state from annotation_assignment").fetchone()[0] == "expired"

        wait_for(expired, timeout=60, what="the embedded worker to run the task", log=tmp_path / "worker.log")
        with sqlite3.connect(db) as con:  # its slot given back
            assert con.execute("select leased from annotation_comparison where id = ?", (comparison_id,)).fetchone()[0] == 0
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10).read().decode()
        assert "Log in" in login
        js = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/annotation/annotate.js", timeout=10).read().decode()
        assert "keydown" in js
    # kombu's exchange tables live under PREFLOOP_VAR too, not in the working directory.
    assert (tmp_path / "celery" / "control" / "default.exchange").exists()
    assert not (ROOT / "control").exists()
