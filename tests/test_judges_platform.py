"""AI judges on the platform: their votes are ordinary Votes under judge:<name> that never take a
person's place (vote counts, completion and derived preferences count people only), a local judge
runs over the pending comparisons (tiny model), the command and the API queue it, annotators never
see judge votes or statistics, and the quality report puts judges beside people."""

import io

import pytest
from django.core.management import CommandError, call_command

from annotation import services
from annotation.errors import InvalidInput
from annotation.models import Assignment, Campaign, Comparison, Judge, Preference, Vote
from tests.factories import CampaignFactory, ComparisonFactory
from tests.test_api import assert_error
from workers.judging import run_judge


def verdict(choice, **extra):
    return {"choice": choice, "p_a": 0.7, "p_b": 0.2, "p_tie": 0.1, "consistent": True, "order_choices": ["a", "a"], **extra}


def people_vote(campaign, annotators, comparison, wanted: str):
    """Each annotator leases ``comparison`` (the only open one) and votes ``wanted`` in A/B terms."""
    for user in annotators:
        assignment = services.assignment_next(campaign=campaign, annotator=user)
        assert assignment.comparison_id == comparison.pk
        shown = wanted if assignment.order == Assignment.Order.AB else {"a": "b", "b": "a"}.get(wanted, wanted)
        services.vote_submit(annotator=user, assignment_id=assignment.pk, choice=shown, seconds_spent=4.0)


@pytest.fixture
def judge(campaign):
    return Judge.objects.create(campaign=campaign, name="smol", kind="local")


def test_judge_votes_never_take_a_persons_place(campaign, annotators, judge):
    comparison = ComparisonFactory(campaign=campaign)
    report = services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict("b"))])
    assert (report.recorded, report.already, report.failed) == (1, 0, [])
    vote = Vote.objects.get(judge="judge:smol")
    assert vote.annotator is None and vote.choice == "b" and vote.judge_details["p_a"] == 0.7 and vote.is_gold_correct is None
    comparison.refresh_from_db()
    assert (comparison.vote_count, comparison.status) == (0, "open")  # people still get it, all three of them
    campaign.training_judge = judge
    campaign.save(update_fields=["training_judge"])
    assert services.judge_preferences_derive(campaign=campaign) == 1  # the judge's verdict, until people decide
    assert Preference.objects.get(comparison=comparison).source == "ai"
    people_vote(campaign, annotators[:3], comparison, "a")
    comparison.refresh_from_db()
    pref = Preference.objects.get(comparison=comparison)
    assert comparison.status == "complete" and pref.chosen == comparison.response_a and pref.source == "human"
    assert (pref.n_votes, pref.n_chosen, pref.n_rejected) == (3, 3, 0)  # the judge's "b" is not among them
    # A second delivery keeps the first vote; a verdict without a choice is reported, not stored.
    again = services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict("a"))])
    assert (again.recorded, again.already) == (0, 1) and Vote.objects.get(judge="judge:smol").choice == "b"
    other = ComparisonFactory(campaign=campaign)
    failed = services.judge_votes_record(judge=judge, verdicts=[(other.pk, {"choice": "", "errors": ["HTTP 500: down"]})])
    assert failed.failed == [f"comparison {other.pk}: HTTP 500: down"] and not Vote.objects.filter(comparison=other).exists()


def test_gold_correctness_and_foreign_comparisons(campaign, judge):
    gold = ComparisonFactory(campaign=campaign, kind=Comparison.Kind.GOLD, gold_answer="a")
    services.judge_votes_record(judge=judge, verdicts=[(gold.pk, verdict("a"))])
    assert Vote.objects.get(comparison=gold).is_gold_correct is True
    foreign = ComparisonFactory(campaign=CampaignFactory(slug="other"))
    mine = ComparisonFactory(campaign=campaign)
    with pytest.raises(InvalidInput, match=f"Comparison {foreign.pk} is not in campaign 'c1'"):
        services.judge_votes_record(judge=judge, verdicts=[(mine.pk, verdict("a")), (foreign.pk, verdict("a"))])
    assert not Vote.objects.filter(comparison__in=[foreign, mine]).exists()  # nothing of the batch written


def test_a_local_judge_votes_on_every_pending_comparison(campaign, settings, tiny_policy, judge):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy}
    comparisons = [ComparisonFactory(campaign=campaign) for _ in range(5)]
    report = run_judge(judge_id=judge.pk, limit=3)
    assert report.recorded == 3 and report.failed == []
    report = run_judge(judge_id=judge.pk)
    assert report.recorded == 2 and run_judge(judge_id=judge.pk).recorded == 0
    votes = Vote.objects.filter(judge="judge:smol")
    assert votes.count() == 5 and {v.comparison_id for v in votes} == {c.pk for c in comparisons}
    for v in votes:
        d = v.judge_details
        assert v.choice in ("a", "b", "tie") and d["p_a"] + d["p_b"] + d["p_tie"] == pytest.approx(1.0)
        assert len(d["order_choices"]) == 2 and d["consistent"] == (d["order_choices"][0] == d["order_choices"][1])
        assert v.guideline_version == campaign.guidelines.order_by("-version").first()


def test_the_judge_command(campaign, settings, tiny_policy, judge):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy}
    ComparisonFactory(campaign=campaign)
    out = io.StringIO()
    call_command("judge", "--campaign", "c1", stdout=out, stderr=io.StringIO())
    assert out.getvalue().startswith("judge:smol: 1 vote(s) recorded, 0 already there, 0 failed")
    with pytest.raises(CommandError, match="No judge 'nope' in campaign 'c1'"):
        call_command("judge", "--campaign", "c1", "--judge", "nope")
    Judge.objects.create(campaign=campaign, name="rm", kind="reward")
    with pytest.raises(CommandError, match="judge:rm: No reward model for campaign 'c1' yet"):
        call_command("judge", "--campaign", "c1", "--judge", "rm", stdout=io.StringIO(), stderr=io.StringIO())


def test_api_runs_a_judge_on_its_queue_and_annotators_see_no_judge_votes(api, campaign, annotators, reviewer, admin_user,
                                                                          judge, monkeypatch, django_capture_on_commit_callbacks):
    from annotation import enqueue

    queued = []
    monkeypatch.setattr(enqueue.app, "send_task", lambda name, args=None, **kw: queued.append((name, args, kw.get("queue"))))
    remote = Judge.objects.create(campaign=campaign, name="gpt", kind="openai", base_url="http://127.0.0.1:9/v1", model="m")
    with django_capture_on_commit_callbacks(execute=True):
        assert api(admin_user).post("/api/campaigns/c1/judges/smol/run/").status_code == 202
        assert api(admin_user).post("/api/campaigns/c1/judges/gpt/run/").status_code == 202
    assert queued == [("workers.tasks.judge_pending", [campaign.pk, judge.pk], "gpu"),
                      ("workers.tasks.judge_pending", [campaign.pk, remote.pk], None)]
    assert_error(api(reviewer).post("/api/campaigns/c1/judges/smol/run/"), 403, "permission_denied")
    assert_error(api(admin_user).post("/api/campaigns/c1/judges/nope/run/"), 404, "not_found")
    Judge.objects.filter(pk=judge.pk).update(enabled=False)
    assert_error(api(admin_user).post("/api/campaigns/c1/judges/smol/run/"), 400, "invalid")
    assert [j["voter"] for j in api(reviewer).get("/api/campaigns/c1/judges/").json()] == ["judge:gpt", "judge:smol"]
    # Judge votes and statistics are not for annotators.
    comparison = ComparisonFactory(campaign=campaign)
    services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict("a"))])
    people_vote(campaign, annotators[:1], comparison, "b")
    body = api(annotators[0]).get("/api/votes/?campaign=c1").json()
    rows = body["results"] if isinstance(body, dict) else body
    assert len(rows) == 1 and all("judge" not in str(r.get("annotator", "")) for r in rows)
    assert_error(api(annotators[0]).get("/api/campaigns/c1/quality/"), 403, "permission_denied")
    assert_error(api(annotators[0]).get("/api/campaigns/c1/judges/"), 403, "permission_denied")


def test_quality_report_puts_judges_beside_people(api, campaign, annotators, reviewer, judge):
    other = Judge.objects.create(campaign=campaign, name="contrarian", kind="local")
    wanted = ["a", "b", "a", "a", "b", "a"]
    for choice in wanted:
        comparison = ComparisonFactory(campaign=campaign)
        people_vote(campaign, annotators[:3], comparison, choice)
        services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict(choice))])
        services.judge_votes_record(judge=other, verdicts=[(comparison.pk, verdict("b" if choice == "a" else "a"))])
    report = api(reviewer).get("/api/campaigns/c1/quality/").json()
    assert report["votes"] == 6 * 5 and report["people"]["percent_agreement"] == 1.0
    assert report["people"]["krippendorff_alpha"] == pytest.approx(1.0) and report["everyone"]["percent_agreement"] < 1.0
    judges = {j["judge"]: j for j in report["judges"]}
    assert (judges["judge:smol"]["agree"], judges["judge:smol"]["n"], judges["judge:smol"]["rate"]) == (6, 6, 1.0)
    assert judges["judge:contrarian"]["rate"] == 0.0 and judges["judge:contrarian"]["high"] < 0.5
    voters = {v["voter"]: v for v in report["voters"]}
    assert voters["judge:smol"]["is_judge"] and not voters[annotators[0].username]["is_judge"]
    assert voters[annotators[0].username]["median_seconds"] == 4.0 and voters["judge:contrarian"]["majority_agreement"] == 0.0
    assert voters["judge:contrarian"]["reliability"] < voters["judge:smol"]["reliability"]


def test_console_quality_page(campaign, annotators, reviewer, admin_user, judge, sent, django_capture_on_commit_callbacks):
    from django.test import Client

    for choice in ["a", "b", "a"]:
        comparison = ComparisonFactory(campaign=campaign)
        people_vote(campaign, annotators[:3], comparison, choice)
        services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict(choice))])
    c = Client()
    c.force_login(reviewer)
    html = c.get("/console/c1/quality/").content.decode()
    assert 'id="percent-agreement">1.000<' in html and 'data-judge="judge:smol"' in html
    assert f'data-voter="{annotators[0].username}"' in html and "Judge pending" not in html  # reviewers read only
    assert 'id="quality-link"' in c.get("/console/c1/").content.decode()
    c.force_login(annotators[3])
    assert c.get("/console/c1/quality/").status_code == 403
    c.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        r = c.post("/console/c1/judges/smol/run/")
    assert r.status_code == 302 and sent == [("workers.tasks.judge_pending", [campaign.pk, judge.pk])]
    assert "judge:smol queued" in c.get(r["Location"]).content.decode()


def test_the_judge_gate_opens_on_agreement_and_closes_when_it_drops(campaign, annotators, reviewer, judge):
    from django.test import Client

    from annotation import selectors
    from annotation.quality import judge_gate

    Campaign.objects.filter(pk=campaign.pk).update(training_judge=judge, judge_gate_min_agreement=0.7, judge_gate_min_comparisons=4)
    campaign.refresh_from_db()
    assert judge_gate(campaign=campaign)["reason"] == "closed: 0 comparisons labelled by both judge:smol and people, 4 needed"
    for choice in ["a", "b", "a", "b"]:  # the judge agrees with people
        c = ComparisonFactory(campaign=campaign)
        people_vote(campaign, annotators[:3], c, choice)
        services.judge_votes_record(judge=judge, verdicts=[(c.pk, verdict(choice))])
    judged_only = [ComparisonFactory(campaign=campaign) for _ in range(3)]  # people never see these
    Comparison.objects.filter(pk__in=[c.pk for c in judged_only]).update(status=Comparison.Status.COMPLETE)
    services.judge_votes_record(judge=judge, verdicts=[(c.pk, verdict("a")) for c in judged_only])
    assert services.judge_preferences_derive(campaign=campaign) == 3 and services.judge_preferences_derive(campaign=campaign) == 0
    gate = judge_gate(campaign=campaign)
    assert gate["open"] and gate["reason"] == "open: agreement 1.000 ≥ 0.700 on 4 comparisons"
    assert len(selectors.training_records(campaign=campaign)[0]) == 7
    export = list(selectors.preferences_export_rows(campaign=campaign, with_meta=True))
    ai = [r for r in export if r["source"] == "ai"]
    assert len(ai) == 3 and all(r["judges"] == ["judge:smol"] for r in ai)
    for choice in ["a", "a", "b", "b"]:  # now it disagrees: 4 of 8
        c = ComparisonFactory(campaign=campaign)
        people_vote(campaign, annotators[:3], c, choice)
        services.judge_votes_record(judge=judge, verdicts=[(c.pk, verdict("b" if choice == "a" else "a"))])
    gate = judge_gate(campaign=campaign)
    assert not gate["open"] and gate["reason"] == "closed: agreement 0.500 < 0.700" and gate["agreement"]["n"] == 8
    records = selectors.training_records(campaign=campaign)[0]
    assert len(records) == 8  # people's eight; the judge's three wait for the gate
    client = Client()
    client.force_login(reviewer)
    assert 'id="judge-gate" data-open="false"' in client.get("/console/c1/quality/").content.decode()


def test_leaderboard_api_and_page(api, campaign, annotators, reviewer, annotator):
    from django.test import Client

    from tests.factories import PromptFactory, ResponseFactory

    strong = services.model_version_register_base(spec="some/strong")
    weak = services.model_version_register_base(spec="some/weak")
    for i in range(6):
        prompt = PromptFactory(campaign=campaign)
        a = ResponseFactory(prompt=prompt, model_version=strong if i % 2 else weak, text=f"x{i}" * (i + 1))
        b = ResponseFactory(prompt=prompt, model_version=weak if i % 2 else strong, text=f"y{i}")
        c = ComparisonFactory(campaign=campaign, prompt=prompt, response_a=a, response_b=b)
        people_vote(campaign, annotators[:3], c, "a" if i % 2 else "b")  # the strong one wins every time
    same = ComparisonFactory(campaign=campaign)  # no model versions: not a battle
    people_vote(campaign, annotators[:3], same, "a")
    board = api(reviewer).get("/api/campaigns/c1/leaderboard/").json()
    assert board["battles"] == 18 and [r["model"] for r in board["ratings"]] == ["some/strong", "some/weak"]
    top, bottom = board["ratings"]
    assert top["rating"] > bottom["rating"] and top["wins"] == 18 and top["battles"] == 18 and top["rank"] == 1
    assert_error(api(annotator).get("/api/campaigns/c1/leaderboard/"), 403, "permission_denied")
    c = Client()
    c.force_login(reviewer)
    html = c.get("/console/c1/leaderboard/").content.decode()
    assert 'data-model="some/strong" data-rank="1"' in html and "18 battles" in html


def test_the_training_judge_must_be_the_campaigns_own(campaign, judge):
    from django.core.exceptions import ValidationError

    foreign = Judge.objects.create(campaign=CampaignFactory(slug="other"), name="x", kind="local")
    campaign.training_judge = foreign
    with pytest.raises(ValidationError, match="one of this campaign's judges"):
        campaign.full_clean()
    campaign.training_judge = judge
    campaign.full_clean()
    with pytest.raises(ValidationError, match="needs a base URL and a model name"):
        Judge(campaign=campaign, name="gpt", kind="openai").full_clean()


def test_order_inconsistency_per_judge_in_the_report(api, campaign, reviewer, judge):
    for i, order in enumerate([["a", "a"], ["a", "b"], ["b", "b"], ["b", "a"]]):
        c = ComparisonFactory(campaign=campaign)
        services.judge_votes_record(judge=judge, verdicts=[(c.pk, verdict(order[0], consistent=order[0] == order[1], order_choices=order))])
    single = Judge.objects.create(campaign=campaign, name="single", kind="local", both_orders=False)
    services.judge_votes_record(judge=single, verdicts=[(ComparisonFactory(campaign=campaign).pk, verdict("a", order_choices=["a"]))])
    judges = {j["judge"]: j for j in api(reviewer).get(f"/api/campaigns/{campaign.slug}/quality/").json()["judges"]}
    assert (judges["judge:smol"]["order_inconsistency"], judges["judge:smol"]["both_orders_votes"]) == (0.5, 4)
    assert (judges["judge:single"]["order_inconsistency"], judges["judge:single"]["both_orders_votes"]) == (None, 0)


def test_console_configures_judges_and_the_gate(campaign, reviewer, admin_user, judge):
    from django.test import Client

    admin, viewer = Client(), Client()
    admin.force_login(admin_user)
    viewer.force_login(reviewer)
    url = f"/console/{campaign.slug}/judges/"
    form = {"name": "remote", "kind": "openai", "model": "gpt-judge", "base_url": "https://judge.example/v1",
            "api_key_env": "JUDGE_API_KEY", "batch_size": "4", "concurrency": "2", "both_orders": "on", "enabled": "on"}
    assert viewer.post(url, form).status_code == 403 and not Judge.objects.filter(name="remote").exists()
    r = admin.post(url, form, follow=True)
    assert "judge:remote added" in r.content.decode()
    remote = Judge.objects.get(campaign=campaign, name="remote")
    assert (remote.kind, remote.model, remote.api_key_env, remote.concurrency, remote.both_orders) == ("openai", "gpt-judge", "JUDGE_API_KEY", 2, True)
    # Only a key's variable: never SECRET_KEY or DATABASE_URL sent to someone's base URL as the key.
    for bad in ("SECRET_KEY", "DATABASE_URL", "openai_api_key"):
        r = admin.post(url, {**form, "name": f"x-{bad.lower()}", "api_key_env": bad}, follow=True)
        assert "_API_KEY" in r.content.decode() and not Judge.objects.filter(name=f"x-{bad.lower()}").exists()
    r = admin.post(url, {**form, "name": "zero", "concurrency": "0"}, follow=True)
    assert "concurrency: at least 1" in r.content.decode() and not Judge.objects.filter(name="zero").exists()
    # Invalid: an openai judge without a base URL; a duplicate name; a bad number. Nothing changes.
    r = admin.post(url, {**form, "name": "nourl", "base_url": ""}, follow=True)
    assert "base_url" in r.content.decode() and not Judge.objects.filter(name="nourl").exists()
    r = admin.post(url, form, follow=True)
    assert "already exists" in r.content.decode() and Judge.objects.filter(name="remote").count() == 1
    r = admin.post(url, {**form, "name": "x", "batch_size": "many"}, follow=True)
    assert "whole number" in r.content.decode() and not Judge.objects.filter(name="x").exists()
    # Change: switch it off (unchecked box), fewer in flight; the name stays.
    r = admin.post(url, {**form, "existing": "remote", "name": "renamed", "concurrency": "1", "enabled": ""}, follow=True)
    remote.refresh_from_db()
    assert "judge:remote changed" in r.content.decode() and (remote.name, remote.enabled, remote.concurrency) == ("remote", False, 1)
    # The gate: training judge + thresholds.
    gate = f"/console/{campaign.slug}/judge-gate/"
    values = {"training_judge": "smol", "judge_gate_min_agreement": "0.8", "judge_gate_min_comparisons": "30"}
    assert viewer.post(gate, values).status_code == 403
    r = admin.post(gate, values, follow=True)
    campaign.refresh_from_db()
    assert (campaign.training_judge, campaign.judge_gate_min_agreement, campaign.judge_gate_min_comparisons) == (judge, 0.8, 30)
    r = admin.post(gate, {**values, "judge_gate_min_agreement": "1.5"}, follow=True)
    campaign.refresh_from_db()
    assert "between 0 and 1" in r.content.decode() and campaign.judge_gate_min_agreement == 0.8
    admin.post(gate, {**values, "training_judge": ""})
    campaign.refresh_from_db()
    assert campaign.training_judge is None


def test_console_tables_as_csv(campaign, annotators, reviewer, annotator, judge):
    import csv
    import io

    from django.test import Client

    for choice in "abab":
        c = ComparisonFactory(campaign=campaign)
        people_vote(campaign, annotators[:3], c, choice)
        services.judge_votes_record(judge=judge, verdicts=[(c.pk, verdict(choice, order_choices=[choice, choice]))])
    viewer = Client()
    viewer.force_login(reviewer)
    r = viewer.get(f"/console/{campaign.slug}/quality/voters.csv")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert {row["voter"] for row in rows} == {u.username for u in annotators[:3]} | {"judge:smol"}
    assert all(row["votes"] == "4" for row in rows)
    judges = list(csv.DictReader(io.StringIO(viewer.get(f"/console/{campaign.slug}/quality/judges.csv").content.decode())))
    assert judges == [{"judge": "judge:smol", "rate": "1.0", "low": judges[0]["low"], "high": judges[0]["high"], "n": "4",
                       "order_inconsistency": "0.0", "both_orders_votes": "4"}]
    cohen = list(csv.DictReader(io.StringIO(viewer.get(f"/console/{campaign.slug}/quality/cohen.csv").content.decode())))
    assert len(cohen) == 3 * 2 and all(row["comparisons_in_common"] == "4" for row in cohen)
    assert viewer.get(f"/console/{campaign.slug}/quality/nothing.csv").status_code == 404
    outsider = Client()
    outsider.force_login(annotator)
    assert outsider.get(f"/console/{campaign.slug}/quality/voters.csv").status_code == 403
    r = viewer.get(f"/console/{campaign.slug}/leaderboard/?download=csv")
    assert r.status_code == 200 and r.content.decode().splitlines()[0] == "rank,model,rating,low,high,battles,wins,lc_win_rate"


def test_console_guideline_editor_versions_and_diff(campaign, reviewer, admin_user):
    from django.test import Client

    admin, viewer = Client(), Client()
    admin.force_login(admin_user)
    viewer.force_login(reviewer)
    url = f"/console/{campaign.slug}/guideline/"
    first = campaign.guidelines.get().text
    assert viewer.post(url, {"text": "Be kind."}).status_code == 403 and campaign.guidelines.count() == 1
    r = admin.post(url, {"text": first + "\nPrefer short answers."}, follow=True)
    assert "Version 2 published" in r.content.decode()
    r = admin.post(url, {"text": first + "\nPrefer short answers."}, follow=True)
    assert "Unchanged: version 2" in r.content.decode() and campaign.guidelines.count() == 2
    r = admin.post(url, {"text": "   "}, follow=True)
    assert "cannot be empty" in r.content.decode() and campaign.guidelines.count() == 2
    admin.post(url, {"text": "Prefer short answers.\nCite sources."})
    page = viewer.get(url).content.decode()  # default diff: version 2 -> 3
    assert 'data-version="3"' in page and 'data-version="1"' in page
    assert '<span class="del">-' + first.splitlines()[0] in page and '<span class="add">+Cite sources.</span>' in page
    page = viewer.get(url + "?a=1&b=2").content.decode()
    assert '<span class="add">+Prefer short answers.</span>' in page and "Version 1 → 2" in page
    assert "<textarea" not in page  # reviewers read, admins edit
    assert viewer.get(url + "?a=x&b=99").status_code == 200  # nonsense falls back to the default pair


def test_people_deciding_tie_or_both_bad_removes_the_judges_preference(campaign, annotators, judge):
    campaign.training_judge = judge
    campaign.save(update_fields=["training_judge"])
    comparison = ComparisonFactory(campaign=campaign)
    services.judge_votes_record(judge=judge, verdicts=[(comparison.pk, verdict("a"))])
    assert services.judge_preferences_derive(campaign=campaign) == 1
    people_vote(campaign, annotators[:3], comparison, "both_bad")
    comparison.refresh_from_db()
    assert comparison.status == "complete" and not Preference.objects.filter(comparison=comparison).exists()
    assert services.judge_preferences_derive(campaign=campaign) == 0  # people decided: the judge does not come back
