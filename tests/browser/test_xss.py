"""Hostile input in headless Chromium: XSS payloads in prompts, responses, rationales, campaign
names and descriptions and guidelines are shown as text on every page that displays them (the
annotator page, the console, the Django admin, the browsable API) and never run.

Each page is checked four ways: nothing set ``window.__pwned`` or opened a dialog; the DOM holds no
event-handler attribute, frame, inline script or javascript:/vbscript:/data:text URL (a check that
does not depend on timing); the payloads are visible as typed (rendered, not dropped); and the
Content-Security-Policy refused nothing (a hole it blocked would still be reported)."""

import json

import pytest

from annotation import enqueue, roles, services
from annotation.models import GuidelineVersion, Vote
from tests.browser.test_annotator import current_assignment, login, wait_for_next
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

# Shown exactly as typed both as escaped plain text and through markdown (one per paragraph).
PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    '<svg onload="window.__pwned=3"></svg>',
    "[link](javascript:window.__pwned=4)",
    '<a href="javascript:window.__pwned=5">a</a>',
    '"><iframe srcdoc="<script>parent.__pwned=6</script>"></iframe>',
    '" autofocus onfocus="window.__pwned=7" x="',
    "' autofocus onfocus='window.__pwned=8' x='",
    "<img src=x onerror=alert(9)>",
    "</textarea></pre></title><script>window.__pwned=10</script>",
    "<javascript:window.__pwned=11>",
    "{{7*7}} {{request}} {% now 'Y' %}",
]
# Markdown tricks whose text changes when rendered: checked through the links they must not make.
MARKDOWN_TRICKS = [
    "[x](&#106;avascript:window.__pwned=12)",
    "[x](JAVASCRIPT:window.__pwned=13)",
    "[x](java&#9;script:window.__pwned=14)",
    "![x](javascript:window.__pwned=15)",
    "[x](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX19wd25lZD0xNjwvc2NyaXB0Pg==)",
    "[x][ref]\n\n[ref]: javascript:window.__pwned=17",
]


def hostile(field: str) -> str:
    return "\n\n".join(f"{field} {p}" for p in PAYLOADS + MARKDOWN_TRICKS)


def lines(field: str) -> list[str]:
    return [f"{field} {p}" for p in PAYLOADS]


NAME = "Camp </title><script>window.__pwned=20</script><img src=x onerror=alert(21)>\" autofocus onfocus=\"window.__pwned=22 {{7*7}}"
DESCRIPTION, GUIDE1, GUIDE2 = hostile("description"), hostile("guideline-v1"), hostile("guideline-v2")
SYSTEM, USER, RESPONSE_A, RESPONSE_B = hostile("system"), hostile("user"), hostile("response-a"), hostile("response-b")
RATIONALE = hostile("rationale")

# Everything in the DOM a payload could have turned into code.
HOSTILE_DOM = r"""() => {
  const bad = [];
  for (const el of document.querySelectorAll("*")) {
    const tag = el.tagName.toLowerCase();
    if (["iframe", "frame", "object", "embed"].includes(tag)) bad.push(tag);
    if (tag === "script" && !el.src && !/json/.test(el.type)) bad.push("inline script: " + el.textContent.slice(0, 80));
    for (const a of el.attributes) {
      const name = a.name.toLowerCase();
      if (name.startsWith("on") || name === "srcdoc") bad.push(`${tag}[${name}]`);
      const url = a.value.replace(/[\u0000-\u0020]/g, "").toLowerCase();
      if (["href", "src", "action", "formaction", "xlink:href", "data", "poster"].includes(name)
          && /^(javascript|vbscript|data:text|data:image\/svg)/.test(url)) bad.push(`${tag}[${name}=${a.value}]`);
    }
  }
  return bad;
}"""


def norm(text: str) -> str:
    return " ".join(text.split())


def check_page(page, where: str, shown: dict[str, list[str]] | None = None) -> None:
    """The page at ``where`` ran nothing hostile and shows each text (whitespace aside) in its selector."""
    assert page.evaluate("() => [typeof window.__pwned, typeof parent.__pwned]") == ["undefined", "undefined"], where
    assert page.dialogs == [], where
    assert page.evaluate(HOSTILE_DOM) == [], where
    for selector, texts in (shown or {}).items():
        seen = norm(" ".join(page.locator(selector).all_inner_texts()))
        for text in texts:
            assert norm(text) in seen, f"{where}: {text!r} not shown in {selector}"
    assert page.csp_violations == [], f"{where}: {page.csp_violations}"
    assert page.js_errors == [], f"{where}: {page.js_errors}"


def visit(page, url: str, ready: str = "main, #content") -> None:
    page.goto(url)
    page.wait_for_selector(ready)


def switch_user(page, base: str, username: str) -> None:
    """A fresh session (no cookies) for the next role."""
    page.context.clear_cookies()
    login(page, base, username)


@pytest.fixture
def hostile_campaign(monkeypatch):
    monkeypatch.setattr(enqueue.app, "send_task", lambda name, args=None, **kw: None)  # nothing reaches a broker
    campaign = CampaignFactory(slug="xss", name=NAME, description=DESCRIPTION, votes_per_pair=1, buffer_size=0,
                               guideline__text=GUIDE1)
    prompt = PromptFactory(campaign=campaign, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}])
    first = ComparisonFactory(campaign=campaign, prompt=prompt, response_a=ResponseFactory(prompt=prompt, text=RESPONSE_A),
                              response_b=ResponseFactory(prompt=prompt, text=RESPONSE_B))
    ComparisonFactory(campaign=campaign)
    UserFactory(username="ann", role=roles.ANNOTATOR, campaigns=[campaign])
    UserFactory(username="rev", role=roles.REVIEWER)
    UserFactory(username="boss", role=roles.ADMIN)
    return campaign, first


def test_hostile_text_is_shown_as_text_and_never_runs(live_server, page, hostile_campaign):
    campaign, first = hostile_campaign
    base = live_server.url
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))

    # ---- the annotator: home, the annotator page (guideline rendered by the server, the pair by
    # the script), a vote with a hostile rationale, then a guideline change swapped in by the script.
    login(page, base, "ann")
    check_page(page, "home", {".campaigns a": [NAME], ".campaigns p": [DESCRIPTION]})
    page.click("a[href='/annotate/xss/']")
    assignment = current_assignment(page)
    assert page.title().startswith(norm(NAME))
    check_page(page, "annotate", {
        ".topbar .crumb": [NAME], "#guideline-body": lines("guideline-v1"), "#prompt .turn.system": lines("system"),
        "#prompt .turn.user": lines("user"), ".pair": lines("response-a") + lines("response-b"),
    })
    # Markdown made one link per field, from the tab-split scheme: a harmless relative URL. The
    # javascript:, data: and entity-encoded ones stayed text (shown above).
    hrefs = page.locator("#app a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs == ["java%09script:window.__pwned=14"] * 5, hrefs
    services.guideline_publish(campaign=campaign, text=GUIDE2)  # the next comparison brings version 2
    page.keyboard.press("1")
    page.fill("#rationale", RATIONALE)
    page.click("#submit")
    wait_for_next(page, assignment)
    page.wait_for_function("document.getElementById('guideline-version').textContent === 'v2'")
    check_page(page, "annotate, guideline v2", {"#guideline-body": lines("guideline-v2")})
    page.keyboard.press("2")
    page.click("#submit")
    page.wait_for_selector("#empty:not([hidden])")
    check_page(page, "annotate, done")
    vote = Vote.objects.get(assignment_id=assignment)
    assert vote.rationale == RATIONALE and vote.comparison_id == first.pk

    # ---- a reviewer: the console's campaign pages, runs, the guideline and its diff, and the raw
    # records (rationale, prompt, response, guideline) in the Django admin and the browsable API.
    dpo = services.training_run_create(campaign=campaign, kind="dpo", dispatch=False)
    sft = services.training_run_create(campaign=campaign, kind="sft", dispatch=False)
    switch_user(page, base, "rev")
    console = {
        "/console/": {"#campaigns": [NAME]},
        "/console/xss/": {".topbar": [NAME]},
        "/console/xss/quality/": {".topbar": [NAME]},
        "/console/xss/leaderboard/": {".topbar": [NAME]},
        "/console/xss/guideline/": {"pre.guideline-text": lines("guideline-v2")},
        "/console/xss/guideline/?a=1&b=2": {"#diff": lines("guideline-v1") + lines("guideline-v2")},
        f"/console/runs/{dpo.pk}/": {".topbar": [NAME], "#run-status": [NAME]},
        f"/console/runs/compare/?a={dpo.pk}&b={sft.pk}": {"main": [NAME]},
    }
    for url, shown in console.items():
        visit(page, base + url)
        check_page(page, url, shown)
        if url.startswith("/console/xss/"):
            assert norm(NAME) in page.title(), url  # nothing broke out of <title>
    visit(page, f"{base}/console/xss/guideline/")
    assert page.inner_text("pre.guideline-text") == GUIDE2  # a <pre>: exactly the text, line breaks and all
    guideline = GuidelineVersion.objects.get(campaign=campaign, version=2)
    admin = {
        f"/admin/annotation/vote/{vote.pk}/change/": {".field-rationale .readonly": [RATIONALE]},
        f"/admin/annotation/prompt/{first.prompt_id}/change/": {".field-messages .readonly": [json.dumps(first.prompt.messages)]},
        f"/admin/annotation/response/{first.response_a_id}/change/": {".field-text .readonly": [RESPONSE_A]},
        f"/admin/annotation/guidelineversion/{guideline.pk}/change/": {".field-text .readonly": [GUIDE2]},
    }
    for url, shown in admin.items():
        visit(page, base + url, "#content")
        check_page(page, url, shown)
    visit(page, f"{base}/api/votes/", ".response-info")
    check_page(page, "/api/votes/", {".response-info": [json.dumps(RATIONALE)[1:-1]]})

    # ---- an admin: the campaign in the Django admin (list and form) and the guideline editor.
    switch_user(page, base, "boss")
    visit(page, f"{base}/admin/annotation/campaign/", "#result_list")
    check_page(page, "admin campaigns", {"#result_list": [NAME]})
    visit(page, f"{base}/admin/annotation/campaign/{campaign.pk}/change/", "#id_name")
    check_page(page, "admin campaign")
    assert (page.input_value("#id_name"), page.input_value("#id_description"), page.input_value("#id_guideline")) \
        == (NAME, DESCRIPTION, GUIDE2)  # form fields: the exact text, nothing broke out of the value
    visit(page, f"{base}/console/xss/guideline/", "#guideline-text")
    check_page(page, "console guideline editor")
    assert page.input_value("#guideline-text") == GUIDE2
