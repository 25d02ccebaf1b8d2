"""Layering (DESIGN.md): ``annotation`` never imports ``workers``; it enqueues tasks by name,
after the commit, and the routes still send GPU work to the ``gpu`` queue."""

import ast
import json
import os
import subprocess
import sys

import pytest

from annotation import enqueue, services
from tests.processes import ROOT


def test_no_annotation_module_imports_workers():
    """Read the source, so an import inside a function is caught too."""
    offenders = []
    for path in sorted((ROOT / "annotation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "workers"]
    assert offenders == []


def test_web_modules_load_no_workers_module():
    code = (
        "import sys, django; django.setup(); "
        "before = {m for m in sys.modules if m.split('.')[0] == 'workers'}; "  # the installed app's empty package
        "import annotation.services, annotation.admin, annotation.api, annotation.api_runs, annotation.api_evaluations, annotation.views, annotation.demo; "
        "import webapp.urls, annotation.management.commands.train, annotation.management.commands.evaluate; "
        "import annotation.console.views; "
        "import annotation.management.commands.import_preferences, annotation.management.commands.import_prompts; "
        "import annotation.management.commands.export_preferences, annotation.management.commands.seed_demo; "
        "print(sorted({m for m in sys.modules if m.split('.')[0] == 'workers'} - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "task,queue", [("gpu_train", "gpu"), ("gpu_evaluate", "gpu"), ("sample_pairs", "gpu"), ("expire_leases", "default"),
                   ("refill_buffers", "default"), ("retrain_due", "default")]
)
def test_tasks_sent_by_name_keep_their_routes(task, queue):
    assert enqueue.app.amqp.router.route({}, f"workers.tasks.{task}", [], {}, None)["queue"].name == queue


def test_a_task_sent_by_name_reaches_the_gpu_queue_on_redis():
    import redis

    broker = redis.Redis.from_url(enqueue.app.conf.broker_url)
    enqueue.gpu_train(-424242)  # an id no run has
    mine = [m for m in broker.lrange("gpu", 0, -1)
            if json.loads(m)["headers"]["task"] == "workers.tasks.gpu_train" and json.loads(m)["headers"]["argsrepr"] == "[-424242]"]
    for m in mine:
        broker.lrem("gpu", 1, m)
    assert len(mine) == 1


def test_training_run_is_enqueued_by_name_after_commit(campaign, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.training_run_create(campaign=campaign, kind="dpo", config={})
    assert sent == [] and len(callbacks) == 1  # nothing is sent before the run's row is committed
    callbacks[0]()
    assert sent == [("workers.tasks.gpu_train", [run.pk])]


def test_admin_sample_action_enqueues_by_name(campaign, admin_user, sent, client, django_capture_on_commit_callbacks):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post("/admin/annotation/campaign/", {"action": "sample_pairs_now", "_selected_action": [campaign.pk]})
    assert r.status_code == 302
    assert sent == [("workers.tasks.sample_pairs", [campaign.pk, campaign.buffer_size])]
