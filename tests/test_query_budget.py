"""A query budget per annotation call (issue 13's speed work): a lease (next), a vote and a skip
may not grow their SQL. Set at what they make now, savepoints included (the lease's prompt and
responses come with the locked comparison, three queries fewer than before)."""

import pytest

NEXT_BUDGET, HELD_BUDGET, VOTE_BUDGET, SKIP_BUDGET = 15, 7, 11, 11
# a campaign with gold, gold due: next counts the gold items too, and a gold lease first locks and
# checks a normal candidate (gold goes out only beside normal work): 4 more


@pytest.mark.parametrize("gold", [False, True])
def test_next_vote_skip_stay_within_their_query_budget(api, campaign, comparisons, annotator, django_assert_max_num_queries,
                                                       gold, monkeypatch):
    from tests.factories import ComparisonFactory

    if gold:
        campaign.gold_rate = 0.5
        campaign.save(update_fields=["gold_rate"])
        for _ in range(3):
            ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
        monkeypatch.setattr("annotation.services.assignment._gold_due", lambda **kw: True)  # the costlier path, every time
    c = api(annotator)
    for _ in range(2):
        with django_assert_max_num_queries(NEXT_BUDGET + 4 * gold):
            lease = c.post("/api/campaigns/c1/next/").json()["assignment"]["id"]
        with django_assert_max_num_queries(HELD_BUDGET + gold):
            assert c.post("/api/campaigns/c1/next/").json()["assignment"]["id"] == lease
        with django_assert_max_num_queries(VOTE_BUDGET):
            assert c.post(f"/api/assignments/{lease}/vote/", {"choice": "a"}, format="json").status_code == 201
    lease = c.post("/api/campaigns/c1/next/").json()["assignment"]["id"]
    with django_assert_max_num_queries(SKIP_BUDGET):
        assert c.post(f"/api/assignments/{lease}/skip/", {"reason": "unsure"}, format="json").status_code == 200
