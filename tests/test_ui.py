"""The customer page (``/ui``) in a real browser against the real service.

Headless Chromium from the Debian packages (``/usr/bin/chromium``, installed by ``.ci/run``)
driven by Playwright: Playwright cannot download its own browser here, so it is pointed at
that executable. The service is ``bentoml serve`` in a subprocess on a copy of
``serving_home`` with its live state bootstrapped and ``OMNISCORE_CLOCK`` fixed. When no
browser is found the browser tests are skipped with the reason, unless
``OMNISCORE_REQUIRE_SERVICES=1`` (CI), where they fail.

The screenshots of the page (desktop and phone-sized) are written to
``$OMNISCORE_SCREENSHOTS`` when set (``docs/img/`` to refresh the docs' pictures), otherwise
to the test's temporary folder: a test run leaves the checkout as it found it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pandas as pd
import pytest
from training_home import copy_home

from data_layer.live_state import LiveState
from serving.launcher import start_server

pytestmark = pytest.mark.slow
IMAGES = Path(os.environ.get("OMNISCORE_SCREENSHOTS") or tempfile.mkdtemp(prefix="ui-shots-"))
CHROMIUM = os.environ.get("OMNISCORE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "ui-key-0123456789abcdef"
CLOCK = pd.Timestamp("2026-06-29T14:25:00Z")
CUSTOMER = "C000010"


def iso(at: pd.Timestamp) -> str:
    return at.isoformat().replace("+00:00", "Z")


def browser_missing() -> str | None:
    """Why no browser test can run here (None when Playwright and Chromium are present)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed: {exc}"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; OMNISCORE_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing()
    if reason:
        if os.environ.get("OMNISCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (OMNISCORE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(serving_home, tmp_path_factory):
    settings = copy_home(serving_home, tmp_path_factory.mktemp("ui-home"))
    with LiveState.open(settings) as state:
        state.bootstrap(CLOCK)
    options = {"clock": iso(CLOCK), "reload_interval": 0}
    with start_server(settings, api_key=API_KEY, options=options) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c:
        yield c


def burst(customer: str, tag: str, minutes_ago: float) -> list[dict]:
    """App browsing, a cart and a store purchase, the newest ``minutes_ago`` before the clock."""
    at = CLOCK - pd.Timedelta(minutes=minutes_ago)
    rows = [
        ("app", "app_open", None),
        ("app", "product_view", None),
        ("app", "add_to_cart", None),
        ("store", "purchase", 89.0),
    ]
    return [
        {
            "event_id": f"{tag}-{k}",
            "customer_id": customer,
            "event_timestamp": iso(at - pd.Timedelta(minutes=5 * (len(rows) - 1 - k))),
            "channel": channel,
            "event_type": kind,
            "amount": amount,
            "session_id": f"{tag}-s" if channel == "app" else None,
        }
        for k, (channel, kind, amount) in enumerate(rows)
    ]


def test_the_page_is_served_without_the_key_and_its_data_needs_it(server, client):
    page = httpx.get(f"{server.url}/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # One self-contained file: no stylesheet, script or font loaded from anywhere.
    for loads in ("<link", " src=", "@import", "url("):
        assert loads not in page.text, loads
    assert httpx.get(f"{server.url}/ui/api/segments").status_code == 401
    segments = client.get("/ui/api/segments").json()
    assert segments["segments"] and all(s["profile"] for s in segments["segments"])
    assert abs(sum(s["share"] for s in segments["segments"]) - 1) < 1e-9


def open_customer(page, url: str, customer: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#key", API_KEY)
    page.fill("#customer", customer)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=propensity-score]", timeout=30_000)
    page.wait_for_selector("[data-testid=reasons-propensity] rect", timeout=60_000)


def test_search_shows_the_customer_and_a_posted_event_moves_the_page(browser, server, client):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_customer(page, server.url, CUSTOMER)
    view = client.get(f"/customers/{CUSTOMER}").json()
    score_text = page.inner_text("[data-testid=propensity-score]")
    assert score_text == f"{view['propensity']['score']:.1f}"
    assert page.inner_text("[data-testid=propensity-band]") == view["propensity"]["band"]
    assert page.inner_text("[data-testid=segment-name]") == view["segment"]["name"]
    dots = page.locator("[data-testid=timeline] circle")
    assert dots.count() == len(view["recent_events"])
    assert page.locator("#segment-profile tr").count() > 1
    assert "features as of" in page.inner_text("#freshness")

    # A new event through POST /events: the page follows it without a reload.
    events = burst(CUSTOMER, "ui-burst", minutes_ago=2)
    results = client.post("/events", json={"events": events}).json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * len(events)
    after = client.get(f"/customers/{CUSTOMER}").json()
    moved = f"{after['propensity']['score']:.1f}"
    assert moved != score_text, "the burst did not move the propensity: the test shows nothing"
    page.wait_for_selector(f'circle[data-event-id="{events[-1]["event_id"]}"]', timeout=15_000)
    page.wait_for_function(
        "want => document.querySelector('[data-testid=propensity-score]').textContent === want",
        arg=moved,
        timeout=15_000,
    )
    assert "since the previous event" in page.inner_text("#score-propensity")
    page.wait_for_timeout(500)  # the explanation of the new state
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "customer-page.png"), full_page=True)
    assert (IMAGES / "customer-page.png").stat().st_size > 10_000
    assert not errors, errors
    context.close()


def test_the_page_fits_a_phone_screen(browser, server):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = context.new_page()
    open_customer(page, server.url, CUSTOMER)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    columns = page.evaluate("getComputedStyle(document.querySelector('main')).gridTemplateColumns")
    assert len(columns.split()) == 1, columns
    page.screenshot(path=str(IMAGES / "customer-page-phone.png"), full_page=True)
    assert (IMAGES / "customer-page-phone.png").stat().st_size > 10_000
    context.close()


def test_a_wrong_key_is_reported_on_the_page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/ui/")
    page.fill("#key", "not-the-key")
    page.fill("#customer", CUSTOMER)
    page.click("button[type=submit]")
    page.wait_for_selector(".status.error", timeout=15_000)
    assert "API key" in page.inner_text("#status")
    assert page.locator("#view").is_hidden()
    context.close()
