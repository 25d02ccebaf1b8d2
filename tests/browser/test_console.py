"""An admin in headless Chromium: opens a campaign in the console, starts a DPO run on a tiny
model, watches its curve grow while the gpu task's code trains it, and promotes the result."""

import re
import threading

import pytest
from django.db import connection

from annotation import enqueue, roles, services
from annotation.models import Campaign, ModelVersion, PolicyPromotion, TrainingRun
from tests.browser.test_annotator import login
from tests.factories import CampaignFactory, UserFactory
from tests.processes import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

SMALL = {"max_steps": "4", "batch_size": "2", "max_length": "96", "max_prompt_length": "64", "min_response_tokens": "1",
         "log_every": "1", "lr": "0.001"}


def train_in_thread(run_id: int, results: list) -> threading.Thread:
    """What the gpu worker does with the queued run (``workers.tasks.gpu_train``), in a thread."""
    from workers.training_jobs import run_training

    def work():
        try:
            results.append(run_training(run_id=run_id))
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_admin_starts_a_dpo_run_watches_the_curve_and_promotes_the_result(live_server, page, settings, tiny_policy, tmp_path,
                                                                       monkeypatch):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    campaign = CampaignFactory(slug="loop", name="Loop campaign", buffer_size=0)
    lines = (ROOT / "fixtures" / "tests" / "trl_mixed.jsonl").read_text().splitlines()
    assert services.preferences_import(campaign=campaign, lines=list(enumerate(lines, start=1)), fmt="trl").created >= 3
    UserFactory(username="boss", role=roles.ADMIN)
    queued = []  # the web process enqueues by name after the commit; here the test plays the worker
    monkeypatch.setattr(enqueue.app, "send_task", lambda name, args=None, **kw: queued.append((name, args)))
    base = live_server.url

    login(page, base, "boss")
    page.click("header a[href='/console/']")
    page.click("a[href='/console/loop/']")
    page.wait_for_selector("#start-run")
    # Switching the kind reloads the config fields (htmx); back to DPO for the run.
    page.select_option("#run-kind", "reward")
    page.wait_for_selector("#cfg-center_coef")
    assert page.locator("#cfg-beta").count() == 0
    page.select_option("#run-kind", "dpo")
    page.wait_for_selector("#cfg-beta")
    assert page.input_value("#cfg-beta") == "0.1"
    for key, value in SMALL.items():
        page.fill(f"#cfg-{key}", value)
    page.click("#start-run button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/runs/\d+/$"))

    run = TrainingRun.objects.get()
    assert (run.status, run.trigger, run.kind, run.created_by.username) == ("queued", "console", "dpo", "boss")
    assert run.config == {"max_steps": 4, "batch_size": 2, "max_length": 96, "max_prompt_length": 64,
                          "min_response_tokens": 1, "log_every": 1, "lr": 0.001}  # only what was changed
    assert queued == [("workers.tasks.gpu_train", [run.pk])]
    # The page has drawn its (empty) charts once and keeps polling while the run is queued.
    page.wait_for_function("Number(document.getElementById('charts').dataset.updates) >= 1")
    assert page.get_attribute("#charts", "data-points") == "0"
    assert page.get_attribute("#run-status", "data-status") == "queued"

    results = []
    thread = train_in_thread(run.pk, results)
    page.wait_for_function("Number(document.getElementById('charts').dataset.points) > 0", timeout=120_000)
    page.wait_for_function("document.getElementById('run-status').dataset.status === 'succeeded'", timeout=120_000)
    thread.join(timeout=60)
    assert results == ["succeeded"]
    # After the last poll the loss curve has one point per logged step, drawn on a canvas.
    page.wait_for_function("document.getElementById('charts').dataset.status === 'succeeded'")
    assert page.get_attribute(".chart[data-group=loss]", "data-points") == "4"
    assert page.locator(".chart[data-group=loss] canvas").count() >= 1
    assert int(page.get_attribute(".chart[data-group=accuracy]", "data-points")) > 0
    new = ModelVersion.objects.get(training_run=run)
    assert new.name in page.inner_text("#run-output")

    # Promote it from the campaign's overview.
    page.click("#run-output a")
    page.wait_for_selector("#promote-form")
    page.select_option("#promote-version", new.name)
    page.fill("#promote-form input[name=reason]", "looks better")
    page.click("#promote-form button[type=submit]")
    page.wait_for_selector(".flash .message.success")
    assert Campaign.objects.get(pk=campaign.pk).policy == new
    promotion = PolicyPromotion.objects.get()
    assert (promotion.to_version, promotion.by.username, promotion.reason) == (new, "boss", "looks better")
    assert new.name in page.inner_text("#lineage tr.current")
    assert page.js_errors == []
    assert page.csp_violations == []  # the Content-Security-Policy refused nothing the page does
