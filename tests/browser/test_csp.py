"""Pages in headless Chromium under the Content-Security-Policy: a tracking pixel in a prompt is
blocked (unless its host is allowed), and the API docs, DRF's browsable API and the Django admin
run without a violation."""

import pytest

from annotation import roles
from tests.browser.test_annotator import current_assignment, login
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def pixel_campaign(pixel_url: str):
    campaign = CampaignFactory(slug="px", votes_per_pair=1)
    prompt = PromptFactory(campaign=campaign, messages=[{"role": "user", "content": f"Look: ![pixel]({pixel_url}) **hi**"}])
    ComparisonFactory(campaign=campaign, prompt=prompt, response_a=ResponseFactory(prompt=prompt, text="one"),
                      response_b=ResponseFactory(prompt=prompt, text="two"))
    UserFactory(username="boss", role=roles.ADMIN)  # admins may annotate in every campaign
    return campaign


def watch_pixel(page) -> list:
    """Requests the browser sends for the pixel (a blocked image is never requested)."""
    fetched = []

    def answer(route):
        fetched.append(route.request.url)
        route.fulfill(status=200, content_type="image/gif", body=b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

    page.route("**/pixel.gif", answer)
    return fetched


def test_a_tracking_pixel_in_a_prompt_is_blocked(live_server, page):
    # Another origin than the page's (localhost vs 127.0.0.1): img-src 'self' refuses it.
    pixel = live_server.url.replace("localhost", "127.0.0.1") + "/pixel.gif"
    pixel_campaign(pixel)
    fetched = watch_pixel(page)
    login(page, live_server.url, "boss")
    page.goto(f"{live_server.url}/annotate/px/")
    current_assignment(page)
    assert page.locator("#prompt strong").inner_text() == "hi"
    page.wait_for_function("document.querySelector('#prompt img') !== null")
    page.wait_for_timeout(300)
    assert fetched == []
    assert any("img-src" in v and "pixel.gif" in v for v in page.csp_violations), page.csp_violations
    assert page.js_errors == []


def test_an_allowed_image_host_loads(live_server, page, settings):
    other = live_server.url.replace("localhost", "127.0.0.1")
    directives = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {**directives, "img-src": [*directives["img-src"], other]}}
    pixel_campaign(other + "/pixel.gif")
    fetched = watch_pixel(page)
    login(page, live_server.url, "boss")
    page.goto(f"{live_server.url}/annotate/px/")
    current_assignment(page)
    page.wait_for_function("document.querySelector('#prompt img') && document.querySelector('#prompt img').complete")
    assert fetched == [other + "/pixel.gif"]
    assert page.csp_violations == []


def test_docs_browsable_api_and_admin_run_without_violations(live_server, page, admin_user):
    admin_user.username = "boss"
    admin_user.save()
    campaign = CampaignFactory(slug="c1")
    base = live_server.url
    login(page, base, "boss")

    page.goto(f"{base}/api/docs/")
    page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI drew the operations from /api/schema/
    assert page.locator(".opblock").count() >= 20

    page.goto(f"{base}/api/campaigns/")  # a browser gets DRF's browsable API
    page.wait_for_selector(".response-info")
    assert "c1" in page.inner_text(".response-info")

    for url in ("/admin/", f"/admin/annotation/campaign/{campaign.pk}/change/", "/admin/annotation/vote/"):
        page.goto(base + url)
        page.wait_for_selector("#content")
    assert page.csp_violations == [], page.csp_violations
    assert page.js_errors == []
