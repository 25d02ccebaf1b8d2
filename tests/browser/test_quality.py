"""A reviewer and an admin in headless Chromium on the console's quality and leaderboard pages:
people's agreement, an AI judge beside them with its interval, a flagged annotator, the judge
gate's state, the judge queued with one click, and the leaderboard's ranks."""

import pytest

from annotation import enqueue, roles, services
from annotation.models import Assignment, Campaign, Judge
from tests.browser.test_annotator import login
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def vote(campaign, user, comparison, wanted):
    assignment = services.assignment_next(campaign=campaign, annotator=user)
    assert assignment.comparison_id == comparison.pk
    shown = wanted if assignment.order == Assignment.Order.AB else {"a": "b", "b": "a"}[wanted]
    services.vote_submit(annotator=user, assignment_id=assignment.pk, choice=shown, seconds_spent=3.0)


def test_reviewer_reads_quality_and_admin_queues_a_judge(live_server, page, monkeypatch):
    campaign = CampaignFactory(slug="q", name="Quality campaign", votes_per_pair=3, buffer_size=0)
    people = [UserFactory(username=f"ann{i}", role=roles.ANNOTATOR, campaigns=[campaign]) for i in range(3)]
    UserFactory(username="rev", role=roles.REVIEWER)
    UserFactory(username="boss", role=roles.ADMIN)
    judge = Judge.objects.create(campaign=campaign, name="smol", kind="local")
    Campaign.objects.filter(pk=campaign.pk).update(training_judge=judge, judge_gate_min_comparisons=4)
    strong = services.model_version_register_base(spec="some/strong")
    weak = services.model_version_register_base(spec="some/weak")
    for i in range(6):
        prompt = PromptFactory(campaign=campaign)
        a = ResponseFactory(prompt=prompt, model_version=strong, text=f"Strong answer {i}.")
        b = ResponseFactory(prompt=prompt, model_version=weak, text=f"Weak {i}.")
        c = ComparisonFactory(campaign=campaign, prompt=prompt, response_a=a, response_b=b)
        for user in people[:2]:
            vote(campaign, user, c, "a")
        vote(campaign, people[2], c, "b")  # ann2 disagrees every time
        services.judge_votes_record(judge=judge, verdicts=[(c.pk, {"choice": "a", "p_a": 0.8, "p_b": 0.1, "p_tie": 0.1,
                                                                    "consistent": True, "order_choices": ["a", "a"]})])
    queued = []
    monkeypatch.setattr(enqueue.app, "send_task", lambda name, args=None, **kw: queued.append((name, args, kw.get("queue"))))
    base = live_server.url

    login(page, base, "rev")
    page.goto(f"{base}/console/q/")
    page.click("#quality-link")
    page.wait_for_selector("#agreement")
    assert page.inner_text("#percent-agreement") == "0.333"  # of the three pairs of people, one agrees each time
    judge_row = page.locator("#judge-agreement tr[data-judge='judge:smol']")
    assert "1.000" in judge_row.inner_text() and "6" in judge_row.inner_text()
    assert page.get_attribute("#judge-gate", "data-open") == "true" and "open: agreement 1.000" in page.inner_text("#judge-gate")
    assert page.locator("tr[data-voter='ann2'].flagged").count() == 0  # 6 votes: below the 10 a flag needs
    assert "Judge pending" not in page.content()  # reviewers read only
    page.goto(f"{base}/console/q/leaderboard/")
    assert page.get_attribute("tr[data-model='some/strong']", "data-rank") == "1"
    assert page.locator("#leaderboard tbody tr").count() == 2
    # The interval bars are placed by console.js from data-bar-* (no style="" under the CSP).
    bar = page.locator("tr[data-model='some/strong'] .interval")
    assert bar.evaluate("(el) => el.style.left") == bar.get_attribute("data-bar-left") + "%"
    assert bar.evaluate("(el) => el.getBoundingClientRect().width") > 0

    page.context.clear_cookies()
    login(page, base, "boss")
    page.goto(f"{base}/console/q/quality/")
    page.click("#judge-list button:has-text('Judge pending')")
    page.wait_for_selector("text=judge:smol queued")
    assert queued == [("workers.tasks.judge_pending", [campaign.pk, judge.pk], "gpu")]

    # The admin adds an endpoint judge and makes it the training judge, in the console.
    page.click("#judge-add summary")
    form = page.locator("#judge-add form")
    form.locator("input[name=name]").fill("remote")
    form.locator("select[name=kind]").select_option("openai")
    form.locator("input[name=model]").fill("policy-v1")
    form.locator("input[name=base_url]").fill("http://127.0.0.1:9/v1")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("text=judge:remote added")
    assert Judge.objects.get(campaign=campaign, name="remote").base_url == "http://127.0.0.1:9/v1"
    page.select_option("#gate-form select[name=training_judge]", "remote")
    page.fill("#gate-form input[name=judge_gate_min_agreement]", "0.9")
    page.click("#gate-form button[type=submit]")
    page.wait_for_selector("text=training judge judge:remote")
    assert page.get_attribute("#judge-gate", "data-open") == "false"  # the new judge has agreed with nobody yet
    campaign.refresh_from_db()
    assert (campaign.training_judge.name, campaign.judge_gate_min_agreement) == ("remote", 0.9)

    # The guideline editor: publish a second version, read the diff.
    page.goto(f"{base}/console/q/")
    page.click("#guideline-link")
    page.fill("#guideline-text", page.input_value("#guideline-text") + "\nPrefer answers that cite a source.")
    page.click("#editor button[type=submit]")
    page.wait_for_selector("text=Version 2 published")
    assert "+Prefer answers that cite a source." in page.inner_text("#diff .add")
    assert campaign.guidelines.count() == 2
    assert page.js_errors == []
    assert page.csp_violations == []  # the Content-Security-Policy refused nothing the pages do
