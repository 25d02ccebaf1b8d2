"""The console's evaluation page (figures, the win-rate bar with its interval and the gate's
minimum, example pairs escaped, the gate's decision) with one-click promote and roll back for
admins, and the campaign page's evaluations table and "Evaluate" form. The figures are stored
as the gpu task would store them (``evaluation_finish``); no model runs here."""

import re

import pytest

from annotation import services
from annotation.models import Campaign, Evaluation, ModelVersion, PolicyPromotion
from tests.factories import UserFactory
from tests.test_console import client_for, finished_run

FIGURES = {"n_prompts": 8, "wins": 5, "ties": 1, "losses": 2, "win_rate": 0.6875, "win_low": 0.3860, "win_high": 0.8894,
           "kl": 0.4213, "mean_length_new": 41.5, "mean_length_active": 57.25, "distinct2_new": 0.812, "distinct2_active": 0.905}
EXAMPLE = {"prompt": [{"role": "user", "content": "Is 2 < 3?"}], "new": "<b>yes</b> & done", "active": "<script>alert(1)</script>",
           "reward_new": 0.4321, "reward_active": -0.1234, "outcome": "win", "seed": 7}


def gate(campaign, min_win_rate, max_kl=None) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(gate_min_win_rate=min_win_rate, gate_max_kl=max_kl, gate_min_prompts=1)
    campaign.refresh_from_db()


def finished_evaluation(campaign, candidate, **figures) -> Evaluation:
    evaluation = services.evaluation_create(campaign=campaign, candidate=candidate, seed=11, max_prompts=8)
    judge = ModelVersion.objects.get_or_create(name="judge-rm", defaults={"kind": "reward", "base": "some/base-model"})[0]
    return services.evaluation_finish(evaluation_id=evaluation.pk, figures={**FIGURES, "examples": [EXAMPLE], **figures},
                                      reference=campaign.policy, reward_model=judge)


@pytest.fixture
def base(campaign):
    version = services.model_version_register_base(spec="some/base-model")
    Campaign.objects.filter(pk=campaign.pk).update(policy=version)
    campaign.refresh_from_db()
    return version


@pytest.fixture
def held(campaign, base, sent):
    """A DPO version whose evaluation the gate held (win rate 0.6875 < 0.75; KL 0.42 > 0.3)."""
    gate(campaign, 0.75, 0.3)
    _, v1 = finished_run(campaign, base)
    return finished_evaluation(campaign, v1)


def test_reviewers_read_annotators_are_refused_only_admins_decide(held, annotator, reviewer, admin_user):
    page, writes = f"/console/evaluations/{held.pk}/", [f"/console/evaluations/{held.pk}/promote/",
                                                       f"/console/evaluations/{held.pk}/rollback/", "/console/c1/evaluations/"]
    assert client_for(reviewer).get(page).status_code == 200 and client_for(admin_user).get(page).status_code == 200
    for user in (annotator, UserFactory()):
        assert client_for(user).get(page).status_code == 403
    assert client_for(admin_user).get("/console/evaluations/999999/").status_code == 404
    for url in writes:
        for user in (annotator, reviewer):
            assert client_for(user).post(url, {"candidate": held.candidate.name}).status_code == 403, url
    assert not PolicyPromotion.objects.exists() and Evaluation.objects.count() == 1
    html = client_for(reviewer).get(page).content.decode()
    assert "Promote</button>" not in html and "Roll back</button>" not in html  # reviewers see no buttons
    assert 'id="evaluate-form"' not in client_for(reviewer).get("/console/c1/").content.decode()


def test_page_shows_the_figures_the_bar_the_gate_and_escaped_examples(held, base, admin_user):
    html = client_for(admin_user).get(f"/console/evaluations/{held.pk}/").content.decode()
    assert f"{held.candidate.name} vs {base.name}" in html
    assert 'id="evaluation-state">succeeded' in html and 'id="evaluation-decision">held' in html
    assert "gate not met: win rate 0.688 &lt; 0.75, KL 0.421 &gt; 0.3; an admin decides" in html
    assert 'id="win-rate">0.688<' in html and "[0.386–0.889]" in html and "5 win(s), 1 tie(s), 2 loss(es) on 8 prompt(s)" in html
    bar = html[html.index('id="win-bar"'):html.index("</div>", html.index('id="win-bar"'))]
    # Placed by console.js from data-bar-* (the CSP refuses style="" attributes).
    assert 'class="interval" data-bar-left="38.6" data-bar-width="50.3"' in bar and 'class="point" data-bar-left="68.8"' in bar
    assert 'class="gate" data-bar-left="75.0"' in bar and 'id="gate-min">0.75<' in html
    assert 'id="kl">0.4213<' in html and 'id="gate-max-kl">0.3<' in html and '<span class="badge failed">over</span>' in html
    sides = html[html.index('id="evaluation-sides"'):]
    assert re.search(r'data-key="mean_length"><th>[^<]+</th><td class="num">41.5</td><td class="num">57.3</td>', sides)
    assert re.search(r'data-key="distinct2"><th>[^<]+</th><td class="num">0.812</td><td class="num">0.905</td>', sides)
    examples = html[html.index('id="examples"'):]
    assert "user: Is 2 &lt; 3?" in examples and "&lt;b&gt;yes&lt;/b&gt; &amp; done" in examples
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in examples and "<script>alert" not in html
    assert "0.432" in examples and "-0.123" in examples and ">win</span>" in examples
    assert 'id="evaluation-promote-form"' in html and "Roll back</button>" not in html  # held: the admin decides
    assert "hx-trigger" not in html  # finished: not polled
    # The run that made the candidate links to its evaluation.
    run_html = client_for(admin_user).get(f"/console/runs/{held.candidate.training_run_id}/").content.decode()
    assert f'href="/console/evaluations/{held.pk}/" id="run-evaluation">evaluation {held.pk}</a>' in run_html


def test_promote_from_the_page_sets_the_policy_and_records_who_then_roll_back(held, campaign, base, admin_user):
    c = client_for(admin_user)
    r = c.post(f"/console/evaluations/{held.pk}/promote/", {"reason": "good enough"}, follow=True)
    campaign.refresh_from_db()
    assert campaign.policy == held.candidate
    record = PolicyPromotion.objects.get()
    assert (record.action, record.by, record.from_version, record.to_version) == ("promote", admin_user, base, held.candidate)
    assert record.reason == f"evaluation {held.pk}: good enough (win rate 0.688 [0.386, 0.889], KL 0.421)"
    html = r.content.decode()
    assert "is now the active policy." in html and 'id="candidate-active"' in html
    assert 'id="evaluation-promote-form"' not in html and 'id="evaluation-rollback-form"' in html  # one click back
    assert "Promotions of this version" in html and admin_user.username in html
    assert "already the active policy" in c.post(f"/console/evaluations/{held.pk}/promote/", follow=True).content.decode()
    assert PolicyPromotion.objects.count() == 1

    r = c.post(f"/console/evaluations/{held.pk}/rollback/", follow=True)
    campaign.refresh_from_db()
    assert campaign.policy == base and f"Rolled back: the active policy is {base.name}." in r.content.decode()
    back = PolicyPromotion.objects.latest("pk")
    assert (back.action, back.by, back.reason) == ("rollback", admin_user, f"evaluation {held.pk}: rolled back from the evaluation page")
    assert 'id="evaluation-promote-form"' in r.content.decode()  # undone: the admin may decide again


def test_roll_back_from_a_stale_page_undoes_nothing(held, campaign, base, admin_user):
    c = client_for(admin_user)
    c.post(f"/console/evaluations/{held.pk}/promote/")
    _, v2 = finished_run(campaign, held.candidate)
    services.campaign_policy_promote(campaign=campaign, version=v2, user=admin_user)  # someone promoted another since
    r = c.post(f"/console/evaluations/{held.pk}/rollback/", follow=True)
    campaign.refresh_from_db()
    assert campaign.policy == v2 and "is no longer the promotion a roll-back undoes" in r.content.decode()
    assert PolicyPromotion.objects.filter(action="rollback").count() == 0


def test_gate_promoted_and_unfinished_evaluations_offer_no_promote(campaign, base, admin_user, sent):
    gate(campaign, 0.5)
    _, v1 = finished_run(campaign, base)
    promoted = finished_evaluation(campaign, v1)
    assert promoted.decision == "promoted" and Campaign.objects.get(pk=campaign.pk).policy == v1
    c = client_for(admin_user)
    html = c.get(f"/console/evaluations/{promoted.pk}/").content.decode()
    assert 'id="evaluation-promote-form"' not in html and 'id="evaluation-rollback-form"' in html  # the gate's promotion
    assert "by the gate" in html and 'class="gate" data-bar-left="50.0"' in html
    # No gate, and still queued: polled, nothing to decide yet.
    gate(campaign, None)
    _, v2 = finished_run(campaign, v1)
    queued = services.evaluation_create(campaign=campaign, candidate=v2)
    html = c.get(f"/console/evaluations/{queued.pk}/").content.decode()
    assert f'hx-get="/console/evaluations/{queued.pk}/" hx-trigger="every 2s"' in html and "Not measured yet." in html
    assert 'id="evaluation-promote-form"' not in html
    r = c.post(f"/console/evaluations/{queued.pk}/promote/", follow=True)
    assert "only a finished evaluation can promote" in r.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).policy == v1


def test_campaign_page_lists_evaluations_and_queues_one(held, campaign, base, admin_user, sent,
                                                       django_capture_on_commit_callbacks):
    c = client_for(admin_user)
    _, v2 = finished_run(campaign, base)
    html = c.get("/console/c1/").content.decode()
    table = html[html.index('id="evaluations-table"'):html.index("</table>", html.index('id="evaluations-table"'))]
    assert f'href="/console/evaluations/{held.pk}/"' in table and held.candidate.name in table
    assert "0.688 [0.386–0.889]" in table and "0.421" in table and "<td>held</td>" in table
    form = html[html.index('id="evaluate-form"'):html.index("</form>", html.index('id="evaluate-form"'))]
    assert f'<option value="{v2.name}">' in form and f'<option value="{base.name}">' not in form  # not the active one
    with django_capture_on_commit_callbacks(execute=True):
        r = c.post("/console/c1/evaluations/", {"candidate": v2.name})
    queued = Evaluation.objects.get(candidate=v2)
    assert r.status_code == 302 and r["Location"] == f"/console/evaluations/{queued.pk}/"
    assert (queued.status, queued.trigger, queued.created_by, queued.baseline) == ("queued", "console", admin_user, base)
    assert sent[-1] == ("workers.tasks.gpu_evaluate", [queued.pk])
    table = c.get("/console/c1/").content.decode()
    assert table.index(f"/console/evaluations/{queued.pk}/") < table.index(f"/console/evaluations/{held.pk}/")  # newest first
    r = c.post("/console/c1/evaluations/", {"candidate": v2.name}, follow=True)  # one queued per version: refused, said why
    assert "already has an evaluation queued or running" in r.content.decode() and Evaluation.objects.filter(candidate=v2).count() == 1
    r = c.post("/console/c1/evaluations/", {"candidate": "nope"}, follow=True)
    assert "No model version &#x27;nope&#x27;." in r.content.decode()
