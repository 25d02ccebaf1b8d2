"""Lists refuse a limit or offset that is not a whole number in range (annotation/pagination.py)
instead of silently serving the first page."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=-1", "offset=null", "offset=-5", "limit=1.5", "offset= 1"])
def test_bad_limit_or_offset_is_refused(api, reviewer, query):
    r = api(reviewer).get(f"/api/votes/?{query}")
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["code"] == "invalid" and set(error["details"]["fields"]) == {query.split("=")[0]}


def test_good_limit_and_offset_page_as_before(api, reviewer):
    r = api(reviewer).get("/api/training-runs/?limit=5&offset=0")
    assert r.status_code == 200 and r.json()["results"] == [] and r.json()["count"] == 0
