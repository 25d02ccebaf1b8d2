"""A real annotator in headless Chromium: log in, work through comparisons with the keyboard."""

import pytest

from annotation import roles
from annotation.models import Assignment, Vote
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]
PASSWORD = "pw-not-secret-123"


def login(page, base, username):
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/")


def current_assignment(page):
    page.wait_for_selector("#item:not([hidden])")
    return int(page.get_attribute("#app", "data-assignment"))


def wait_for_next(page, previous):
    page.wait_for_function(f"document.getElementById('app').dataset.assignment !== '{previous}'")


def test_annotator_completes_three_comparisons_with_the_keyboard(live_server, page):
    campaign = CampaignFactory(slug="kb", votes_per_pair=3)
    evil = PromptFactory(campaign=campaign, messages=[{"role": "user", "content": "<img src=x onerror=\"window.pwned=1\"> **hi**"}])
    ComparisonFactory(
        campaign=campaign, prompt=evil,
        response_a=ResponseFactory(prompt=evil, text="<script>window.pwned=2</script>Plain"),
        response_b=ResponseFactory(prompt=evil, text="`code` answer"),
    )
    for _ in range(3):
        ComparisonFactory(campaign=campaign)
    user = UserFactory(username="ann", role=roles.ANNOTATOR, campaigns=[campaign])  # a member
    base = live_server.url

    login(page, base, "ann")
    page.click("a[href='/annotate/kb/']")
    first = current_assignment(page)
    assert page.inner_text("#counter") == "0 done · 3 left"

    # The prompt's HTML was escaped: shown as text, never run.
    assert "<img src=x" in page.inner_text("#prompt")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#prompt strong").inner_text() == "hi"

    # 1: "A better", much, with a rationale typed after pressing r.
    page.keyboard.press("1")
    page.keyboard.press("w")
    page.keyboard.press("r")
    page.keyboard.type("more accurate")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    wait_for_next(page, first)
    second = current_assignment(page)

    # ? shows the keys, ? hides them.
    page.keyboard.press("?")
    assert page.is_visible("#keys")
    page.keyboard.press("?")
    assert not page.is_visible("#keys")

    page.keyboard.press("2")
    page.keyboard.press("Enter")
    wait_for_next(page, second)
    third = current_assignment(page)

    # Enter without a choice asks for one and submits nothing.
    page.keyboard.press("Enter")
    page.wait_for_selector("#message.warn")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    wait_for_next(page, third)
    fourth = current_assignment(page)
    page.wait_for_function("document.getElementById('counter').textContent.startsWith('3 done')")

    # s skips with a reason.
    page.keyboard.press("s")
    page.keyboard.type("cannot judge")
    page.keyboard.press("Enter")
    page.wait_for_selector("#empty:not([hidden])")
    assert page.js_errors == []
    assert page.csp_violations == []  # the Content-Security-Policy refused nothing the page does

    votes = list(Vote.objects.filter(annotator=user).order_by("created_at").select_related("assignment"))
    assert [v.assignment_id for v in votes] == [first, second, third]
    expected = []
    for shown, v in zip(["a", "b", "tie"], votes):
        flip = v.assignment.order == "ba" and shown in ("a", "b")
        expected.append({"a": "b", "b": "a"}[shown] if flip else shown)
    assert [v.choice for v in votes] == expected
    assert [v.strength for v in votes] == ["much", "", ""]
    assert votes[0].rationale == "more accurate"
    assert all(v.seconds_spent is not None and v.seconds_spent >= 0 for v in votes)
    assert all(v.guideline_version.version == 1 and v.order_shown == v.assignment.order for v in votes)
    skipped = Assignment.objects.get(pk=fourth)
    assert (skipped.state, skipped.skip_reason) == ("skipped", "cannot judge")
