"""Nothing an annotator is shown tells a gold item from a normal one: not the progress counter
(next response, annotate page, home page), not the shape of the next / vote / skip responses."""

import re

import pytest

from annotation import selectors
from annotation.models import Assignment
from tests.factories import ComparisonFactory
from tests.test_pages import client_for


@pytest.fixture
def gold_campaign(campaign):
    campaign.gold_rate = 0.2
    campaign.save(update_fields=["gold_rate"])
    for _ in range(3):
        ComparisonFactory(campaign=campaign)
        ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
    return campaign


def force_kind(monkeypatch, kind: str) -> None:
    """The next hand-out is gold (or not): the random draw of ``assignment_next``, fixed."""
    monkeypatch.setattr("annotation.services.assignment._gold_due", lambda **kw: kind == "gold")


def shape(value):
    """The structure of a JSON value: keys and value types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def page_counter(user) -> tuple[int, int]:
    html = client_for(user).get("/annotate/c1/").content.decode()
    done, left = re.search(r'id="counter"[^>]*>(\d+) done · (\d+) left<', html).groups()
    return int(done), int(left)


def test_progress_moves_the_same_after_a_gold_and_a_normal_lease(api, gold_campaign, annotator, monkeypatch):
    client = api(annotator)
    steps = []
    for kind in ("gold", "normal", "gold", "normal"):
        before = selectors.annotator_progress(campaign=gold_campaign, annotator=annotator)
        assert page_counter(annotator) == (before["done"], before["remaining"])
        force_kind(monkeypatch, kind)
        body = client.post("/api/campaigns/c1/next/").json()
        leased = Assignment.objects.select_related("comparison").get(pk=body["assignment"]["id"])
        assert leased.comparison.kind == kind
        after_lease = body["progress"]
        assert page_counter(annotator) == (after_lease["done"], after_lease["remaining"])  # the page shows the same
        vote = client.post(f"/api/assignments/{leased.pk}/vote/", {"choice": "a"}, format="json")
        after_vote = selectors.annotator_progress(campaign=gold_campaign, annotator=annotator)
        steps.append({
            "lease": {k: after_lease[k] - before[k] for k in before},
            "vote": {k: after_vote[k] - after_lease[k] for k in before},
            "next_shape": shape(body),
            "vote_status": vote.status_code,
            "vote_shape": shape(vote.json()),
        })
    gold, normal = steps[0::2], steps[1::2]
    assert gold == normal
    assert steps[0]["lease"] == {"done": 0, "skipped": 0, "remaining": -1, "remaining_capped": 0}  # every lease lowers it by one
    assert steps[0]["vote"] == {"done": 1, "skipped": 0, "remaining": 0, "remaining_capped": 0}


def test_skip_and_home_page_do_not_tell_gold_either(api, gold_campaign, annotator, monkeypatch):
    client = api(annotator)
    seen = {}
    for kind in ("gold", "normal"):
        force_kind(monkeypatch, kind)
        before = selectors.annotator_progress(campaign=gold_campaign, annotator=annotator)["remaining"]
        a = client.post("/api/campaigns/c1/next/").json()["assignment"]
        home = client_for(annotator).get("/").content.decode()
        left = int(re.search(r"(\d+) open to you", home).group(1))
        skip = client.post(f"/api/assignments/{a['id']}/skip/", {"reason": "unsure"}, format="json")
        seen[kind] = (before - left, skip.status_code, skip.json())
    assert seen["gold"] == seen["normal"] == (1, 200, {"detail": "Skipped."})


def test_gold_only_beside_normal_work_and_the_counter_reads_zero_when_that_is_done(api, gold_campaign, annotator,
                                                                                     monkeypatch):
    """Gold is handed out only while a normal item is open to the annotator, and the counter
    reads 0 once none is: "nothing left" never hides gold, and gold is not used up in one run
    when a batch runs dry (each gold item goes to an annotator once: it would be gone for good)."""
    client = api(annotator)
    assert selectors.annotator_progress(campaign=gold_campaign, annotator=annotator)["remaining"] == 6
    force_kind(monkeypatch, "normal")  # gold never due: the normal items run out first
    kinds, counters = [], []
    while (body := client.post("/api/campaigns/c1/next/").json())["assignment"] is not None:
        counters.append(body["progress"]["remaining"])
        kinds.append(Assignment.objects.get(pk=body["assignment"]["id"]).comparison.kind)
        client.post(f"/api/assignments/{body['assignment']['id']}/vote/", {"choice": "a"}, format="json")
    assert kinds == ["normal"] * 3 and counters == [5, 4, 0]  # the last normal lease takes the counter to 0
    assert body["progress"] == {"done": 3, "skipped": 0, "remaining": 0, "remaining_capped": False}
    force_kind(monkeypatch, "gold")  # due now, but no normal work beside it: still nothing
    assert client.post("/api/campaigns/c1/next/").json()["assignment"] is None
    ComparisonFactory(campaign=gold_campaign)  # the next batch: gold comes again beside it
    body = client.post("/api/campaigns/c1/next/").json()
    assert Assignment.objects.get(pk=body["assignment"]["id"]).comparison.kind == "gold" and body["progress"]["remaining"] == 3


def test_campaign_without_gold_counts_no_gold_and_hands_none(api, campaign, annotator):
    ComparisonFactory(campaign=campaign)
    ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")  # gold_rate 0: never handed out
    client = api(annotator)
    body = client.post("/api/campaigns/c1/next/").json()
    assert body["progress"]["remaining"] == 0
    client.post(f"/api/assignments/{body['assignment']['id']}/vote/", {"choice": "a"}, format="json")
    assert client.post("/api/campaigns/c1/next/").json() == {"assignment": None, "progress": {"done": 1, "skipped": 0, "remaining": 0, "remaining_capped": False}}


def test_counter_counts_up_to_its_cap_and_says_so(api, gold_campaign, annotator, monkeypatch):
    """``remaining`` is counted up to PROGRESS_COUNT_CAP (a count over a whole campaign on every
    lease grew with the campaign); past it the counter stands at the cap whatever is leased, gold
    or normal, and says there are more. Below it, it is exact again."""
    from annotation.limits import PROGRESS_COUNT_CAP

    ComparisonFactory.create_batch(PROGRESS_COUNT_CAP - 2, campaign=gold_campaign)  # 101 normal + 3 gold
    client = api(annotator)
    assert selectors.annotator_progress(campaign=gold_campaign, annotator=annotator)["remaining_capped"] is True
    for skipped, kind in enumerate(("gold", "normal", "gold")):
        force_kind(monkeypatch, kind)
        body = client.post("/api/campaigns/c1/next/").json()
        assert body["progress"] == {"done": 0, "skipped": skipped, "remaining": PROGRESS_COUNT_CAP, "remaining_capped": True}
        client.post(f"/api/assignments/{body['assignment']['id']}/skip/", {"reason": "unsure"}, format="json")
    # 100 normal + 1 gold open: 101 counted, still over the cap; one more lease and it is exact
    force_kind(monkeypatch, "normal")
    body = client.post("/api/campaigns/c1/next/").json()
    assert body["progress"] == {"done": 0, "skipped": 3, "remaining": PROGRESS_COUNT_CAP, "remaining_capped": False}
    assert page_counter(annotator) == (0, PROGRESS_COUNT_CAP)
