"""The web console at `/`, in a real browser: Debian's headless Chromium driven by
Playwright (`executable_path` points at the system browser; nothing is downloaded).

Against the real gateway and provider: the page and its assets are served with
their content types and a strict CSP (and the browser reports no violation); the
Chat page takes a key (sessionStorage only), streams an answer and shows its
tokens, cost (equal to what the gateway charged), provider and a receipt that
verifies; the Account page lists the channel that answer opened; the Operator page
(admin token) shows the provider Active, the pools and the last hour's chart.
Screenshots of each page go to target/screenshots/.
"""
import os
from pathlib import Path

import httpx
import pytest

import conftest
from conftest import CHAT_MODEL, ROOT

ADMIN = conftest.AGENT_ADMIN
CHROMIUM = os.environ.get("TENZRO_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "target" / "screenshots"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)",
)


@pytest.fixture(scope="module")
def stack(agent_gateway):
    """The shared agent gateway (conftest) with this file's own funded key."""
    url = agent_gateway["url"]
    return {"url": url, "key": conftest.new_key(url, name="console")}


def test_page_and_assets_have_their_types_and_a_strict_csp(stack):
    for path, ctype in [("/", "text/html"), ("/console/app.js", "text/javascript"), ("/console/style.css", "text/css")]:
        r = httpx.get(stack["url"] + path, timeout=10)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(ctype), path
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    # The operator's data needs the admin token.
    assert httpx.get(stack["url"] + "/admin/stats", timeout=10).status_code == 401
    bad = httpx.post(stack["url"] + "/v1/receipts/verify", json={"receipt": {"model": "x"}}, timeout=10).json()
    assert bad["valid"] is False and "not a provider receipt" in bad["error"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_chat_account_and_operator_pages(stack, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(stack["url"] + "/")

    # Chat: the key goes to sessionStorage only; an answer streams with its facts.
    page.fill("#api-key", stack["key"])
    page.click("#api-key-use")
    page.wait_for_selector(f"#model option[value='{CHAT_MODEL}']", state="attached", timeout=30000)
    assert page.evaluate("sessionStorage.getItem('tenzro.key')") == stack["key"]
    assert page.evaluate("localStorage.length") == 0
    before = spent_today(stack)
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    try:
        page.wait_for_selector(".msg.assistant .cost", timeout=180000)
    except Exception:
        page.screenshot(path=str(SHOTS / "chat-failed.png"), full_page=True)
        raise AssertionError(f"no answer with a cost; the page says: {page.inner_text('#app')}")
    answer = page.locator(".msg.assistant").last
    assert answer.evaluate("e => e.firstChild.data").strip(), "streamed text"
    units = int(answer.locator(".cost").get_attribute("data-units"))
    assert units > 0 and units == spent_today(stack) - before, "the cost shown is the gateway's charge"
    assert "completion tokens" in answer.locator(".tokens").inner_text()
    assert answer.locator(".provider").inner_text() == "provider local"
    page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)

    # The receipt link: the gateway checks the provider's signature.
    answer.locator("a.verify").click()
    page.wait_for_selector("#receipt-result .ok", timeout=30000)
    assert "valid: signed by did:" in page.inner_text("#receipt-result")

    # Account: balances and the channel the answer opened, with its voucher.
    page.click("#nav-account")
    page.wait_for_selector("tr.channel", timeout=30000)
    row = page.locator("tr.channel").first
    assert "local" in row.inner_text() and "open" in row.inner_text()
    page.wait_for_function("!document.querySelector('tr.channel td:last-child').textContent.includes('…')", timeout=30000)
    assert "TNZO" in page.inner_text("#balances")
    page.screenshot(path=str(SHOTS / "account.png"), full_page=True)

    # Operator: the admin token, the provider Active, the live counters and chart.
    page.click("#nav-operator")
    page.fill("#admin-token", ADMIN)
    page.click("#admin-token-use")
    page.wait_for_selector("tr.provider .status-Active", timeout=30000)
    assert "local" in page.inner_text("tr.provider")
    assert page.locator("svg.chart rect.tokens").count() >= 1, "this minute's tokens are charted"
    page.screenshot(path=str(SHOTS / "operator.png"), full_page=True)

    # A 404 (a channel with no countersigned voucher yet) is logged as a failed load;
    # anything else (a CSP violation, a script error) fails the test.
    problems = [p for p in problems if not p.startswith("Failed to load resource")]
    assert not problems, f"browser errors (a CSP violation is one): {problems}"
    page.close()
    stats = httpx.get(stack["url"] + "/admin/stats", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
    assert len(stats["minutes"]) == 60
    assert sum(m["requests"] for m in stats["minutes"]) >= 1
    assert sum(int(m["spend"].get("TNZO", "0")) for m in stats["minutes"]) >= units


def spent_today(stack) -> int:
    r = httpx.get(f"{stack['url']}/v1/account", headers={"Authorization": f"Bearer {stack['key']}"}, timeout=10)
    r.raise_for_status()
    return int(r.json()["spent_today"]["TNZO"])


def test_api_data_is_rendered_as_text(stack, browser):
    """A model reply with markup stays text: the page never parses API data as HTML."""
    page = browser.new_page()
    page.goto(stack["url"] + "/")
    page.evaluate("k => sessionStorage.setItem('tenzro.key', k)", stack["key"])
    page.reload()
    page.wait_for_selector(f"#model option[value='{CHAT_MODEL}']", state="attached", timeout=30000)
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Repeat exactly: <img src=x onerror=alert(1)><b>bold</b>")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .meta .cost", timeout=180000)
    assert page.locator(".msg img, .msg b").count() == 0
    assert "<img" in page.inner_text(".msg.user")
    page.close()
