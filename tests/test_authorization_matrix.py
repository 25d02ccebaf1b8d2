"""Access as one table: every API endpoint and page x role (anonymous, annotator of this
campaign, annotator of another campaign, reviewer, admin). A cell is "allowed" (past
authentication and authorization: any status but 401/403, never a 5xx; a 404 only where the
id asked for does not exist) or "denied" (403, or 404 where a campaign the user may not see
is hidden; anonymous: 401 from the API, as its schema says, the login redirect from pages). Requests that consume something
(a vote, a skip) run the denied roles first."""

import pytest
from django.test import Client

from annotation import roles, services
from tests.factories import CampaignFactory, ComparisonFactory, UserFactory

M, O, R, A = "member", "other", "reviewer", "admin"
ROLES = ("anonymous", M, O, R, A)
MISSING = 999999

# (method, path, body, allowed roles); {vote} / {skip}: the member's live lease
API = [
    ("get", "/api/campaigns/", None, {M, O, R, A}),
    ("get", "/api/campaigns/c1/", None, {M, R, A}),
    ("post", "/api/campaigns/c1/next/", None, {M, A}),
    ("get", "/api/campaigns/c1/preferences.jsonl", None, {A}),
    ("post", "/api/campaigns/c1/prompts/import/", {}, {A}),
    ("post", "/api/campaigns/c1/preferences/import/", {}, {A}),
    ("post", "/api/assignments/{vote}/vote/", {"choice": "a"}, {M}),
    ("post", "/api/assignments/{skip}/skip/", {"reason": "unsure"}, {M}),
    ("get", "/api/votes/", None, {M, O, R, A}),
    ("post", "/api/campaigns/c1/promote/", {}, {A}),
    ("post", "/api/campaigns/c1/rollback/", {}, {A}),
    ("get", "/api/training-runs/", None, {R, A}),
    ("post", "/api/training-runs/", {}, {A}),
    ("get", f"/api/training-runs/{MISSING}/", None, {R, A}),
    ("post", f"/api/training-runs/{MISSING}/cancel/", {}, {A}),
    ("get", "/api/evaluations/", None, {R, A}),
    ("post", "/api/evaluations/", {}, {A}),
    ("get", f"/api/evaluations/{MISSING}/", None, {R, A}),
    ("post", f"/api/evaluations/{MISSING}/cancel/", {}, {A}),
    ("get", "/api/promotions/", None, {R, A}),
    ("get", "/api/campaigns/c1/quality/", None, {R, A}),
    ("get", "/api/campaigns/c1/judges/", None, {R, A}),
    ("get", "/api/campaigns/c1/leaderboard/", None, {R, A}),
    ("post", "/api/campaigns/c1/judges/nope/run/", {}, {A}),
    ("get", "/v1/models", None, {R, A}),
    ("post", "/v1/chat/completions", {}, {R, A}),
]
PAGES = [
    ("get", "/", {M, O, R, A}),
    ("get", "/annotate/c1/", {M, A}),
    ("get", "/console/", {R, A}),
    ("get", "/console/c1/", {R, A}),
    ("get", "/console/c1/quality/", {R, A}),
    ("get", "/console/c1/quality/voters.csv", {R, A}),
    ("get", "/console/c1/leaderboard/", {R, A}),
    ("get", "/console/c1/guideline/", {R, A}),
    ("get", f"/console/runs/{MISSING}/", {R, A}),
    ("post", "/console/c1/promote/", {A}),
    ("get", "/admin/", {R, A}),
    ("get", "/admin/annotation/auditevent/", {A}),
]


@pytest.fixture
def people(db):
    c1, c2 = CampaignFactory(slug="c1"), CampaignFactory(slug="c2")
    for _ in range(3):
        ComparisonFactory(campaign=c1)
        ComparisonFactory(campaign=c2)
    users = {M: UserFactory(role=roles.ANNOTATOR), O: UserFactory(role=roles.ANNOTATOR),
             R: UserFactory(role=roles.REVIEWER), A: UserFactory(role=roles.ADMIN)}
    services.campaign_members_add(campaign=c1, users=[users[M]])
    services.campaign_members_add(campaign=c2, users=[users[O]])
    return users


def _api_client(user):
    from rest_framework.test import APIClient

    c = APIClient()
    if user is not None:
        c.force_authenticate(user)
    return c


def _check(cell: str, role: str, allowed: bool, status: int, *, page: bool, location: str = "") -> str | None:
    if status >= 500:
        return f"{cell} as {role}: {status}"
    if allowed:
        ok = status not in (401, 403) and not (page and status == 302 and "login" in location)
    elif role == "anonymous":
        ok = (status == 302 and "login" in location) if page else status == 401
    else:
        ok = status in (403, 404) or (page and status == 302 and "login" in location)
    return None if ok else f"{cell} as {role}: {status} {location} ({'allowed' if allowed else 'denied'} expected)"


def test_every_endpoint_by_role(people):
    members_lease = {}

    def lease() -> int:
        r = _api_client(people[M]).post("/api/campaigns/c1/next/")
        return r.json()["assignment"]["id"]

    wrong = []
    for method, path, body, allowed in API:
        order = sorted(ROLES, key=lambda role: role in allowed)  # denied first: a vote or skip consumes the lease
        if "{" in path:
            members_lease = {"vote": lease()} if "{vote}" in path else {"skip": lease()}
        url = path.format(**members_lease)
        for role in order:
            client = _api_client(people.get(role))
            r = getattr(client, method)(url, body, format="json") if method == "post" else client.get(url)
            if (problem := _check(f"{method.upper()} {url}", role, role in allowed, r.status_code, page=False)):
                wrong.append(problem)
            if r.status_code == 404 and role in allowed and str(MISSING) not in url and "/nope/" not in url:
                wrong.append(f"{method.upper()} {url} as {role}: 404 on something that exists")
    for method, path, allowed in PAGES:
        for role in ROLES:
            client = Client()
            if role != "anonymous":
                client.force_login(people[role])
            r = getattr(client, method)(path)
            if (problem := _check(f"{method.upper()} {path}", role, role in allowed, r.status_code, page=True,
                                  location=r.headers.get("Location", ""))):
                wrong.append(problem)
    assert not wrong, "\n".join(wrong)


def test_unauthenticated_api_calls_answer_401_and_session_posts_need_csrf(people):
    """401 with WWW-Authenticate (token authentication comes first) for no or bad credentials; a
    browser's session still works, its unsafe calls only with the CSRF token."""
    for headers in ({}, {"HTTP_AUTHORIZATION": "Token nope"}):
        r = Client().post("/api/campaigns/c1/next/", **headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Token", r.content
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(people[M])
    assert browser.get("/api/campaigns/").status_code == 200
    refused = browser.post("/api/campaigns/c1/next/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    browser.get("/annotate/c1/")  # sets the CSRF cookie, as the annotator page does
    token = browser.cookies["csrftoken"].value
    assert browser.post("/api/campaigns/c1/next/", HTTP_X_CSRFTOKEN=token).status_code == 200


def test_an_annotator_never_sees_another_campaign_in_a_listing(people):
    body = _api_client(people[O]).get("/api/campaigns/").json()
    slugs = [c["slug"] for c in (body["results"] if isinstance(body, dict) else body)]
    assert slugs == ["c2"]
    assert b"c1" not in Client().get("/").content
    page = Client()
    page.force_login(people[O])
    assert b"/annotate/c1/" not in page.get("/").content


def test_next_vote_and_skip_are_rate_limited_per_user(people, settings):
    """A script hammering the annotation calls gets 429 with Retry-After; another user does not."""
    from django.core.cache import cache
    from rest_framework.settings import api_settings

    keys = [f"throttle_annotate_{people[role].pk}" for role in (M, A)]  # not cache.clear(): that flushes the broker's Redis db
    cache.delete_many(keys)
    rates = {**api_settings.DEFAULT_THROTTLE_RATES, "annotate": "5/min"}
    from rest_framework.throttling import SimpleRateThrottle

    old = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = rates
    try:
        member = _api_client(people[M])
        codes = [member.post("/api/campaigns/c1/next/").status_code for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        limited = member.post("/api/campaigns/c1/next/")
        assert limited.json()["error"]["code"] == "throttled" and int(limited.headers["Retry-After"]) > 0
        assert _api_client(people[A]).post("/api/campaigns/c1/next/").status_code == 200  # per user
    finally:
        SimpleRateThrottle.THROTTLE_RATES = old
        cache.delete_many(keys)


def test_rate_limit_window_ends_and_counts_across_clients(people, settings):
    """On Redis the limit is one counter per user and window (annotation/throttles.py): a second
    client (another web process, a second tab) of the same user shares it; once the window's
    time is up the user is served again."""
    import time

    from django.core.cache import cache
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    key = f"throttle_annotate_{people[M].pk}"
    cache.delete(key)
    old = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = {**api_settings.DEFAULT_THROTTLE_RATES, "annotate": "3/s"}
    try:
        one, two = _api_client(people[M]), _api_client(people[M])
        codes = [c.post("/api/campaigns/c1/next/").status_code for c in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
        assert one.post("/api/campaigns/c1/next/")["Retry-After"] == "1"
        time.sleep(1.1)
        assert two.post("/api/campaigns/c1/next/").status_code == 200
    finally:
        SimpleRateThrottle.THROTTLE_RATES = old
        cache.delete(key)
