import time

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]


CSP_LISTENER = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));"""


def _is_csp_report(text: str) -> bool:
    return text.startswith("CSP violation:") or "Content Security Policy" in text


def _csp_safe_wait_for_function(page):
    """Playwright's wait_for_function polls with ``new Function`` inside the page, which the
    Content-Security-Policy refuses (no 'unsafe-eval'); this one polls ``page.evaluate`` (run by
    the DevTools protocol, not subject to the page's CSP) from here. Same calls, same result."""
    from playwright.sync_api import Error, TimeoutError

    def wait_for_function(expression, *, arg=None, timeout=None, polling=None):
        deadline = time.monotonic() + (30_000 if timeout is None else timeout) / 1000
        interval = polling if isinstance(polling, (int, float)) else 50
        while True:
            try:
                value = page.evaluate(expression, arg)
                if value:
                    return value
            except Error as exc:  # a navigation in between: try again on the new page
                if "context was destroyed" not in str(exc) and "navigat" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"wait_for_function: {expression!r} still false after {timeout} ms")
            page.wait_for_timeout(interval)

    return wait_for_function


@pytest.fixture
def page(monkeypatch):
    """A fresh headless Chromium page; Playwright lives only as long as the test.

    Playwright's sync API keeps an event loop running in this thread, which makes Django
    refuse ORM calls; the test's own calls are synchronous and safe, so allow them here only.
    """
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.js_errors = []
        page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
        # Content-Security-Policy violations: Chromium's console report ("Refused to ... because it
        # violates the following Content Security Policy directive") and the page's own event.
        page.csp_violations = []
        page.add_init_script(CSP_LISTENER)
        page.on("console", lambda msg: page.csp_violations.append(msg.text) if _is_csp_report(msg.text) else None)
        page.wait_for_function = _csp_safe_wait_for_function(page)
        yield page
        context.close()
        browser.close()
