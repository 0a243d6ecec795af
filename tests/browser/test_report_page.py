"""A report page in headless Chromium with JavaScript off: tables and inline SVG figures read as is.

``FACEBENCH_SCREENSHOTS=1`` writes ``docs/screenshots/report.png`` for the README (otherwise the
screenshot goes to a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from benchmark.models import Report
from benchmark.reports import metric_name, run_report_job, start_report_job
from jobs import progress
from tests.benchmark.synthetic_campaign import make_synthetic_campaign
from tests.browser.conftest import VIEWPORT
from tests.users import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.getenv("FACEBENCH_SCREENSHOTS", "") not in ("", "0"):
        folder = REPO / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


@pytest.fixture
def no_js_page(chromium: Any) -> Any:
    context = chromium.new_context(viewport=VIEWPORT, java_script_enabled=False)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_report_page_renders_without_javascript(
    live_server, no_js_page, researcher, shots, monkeypatch
):
    # The job runs in this process below; nothing goes to a broker.
    monkeypatch.setattr("benchmark.tasks.build_report_task.delay_on_commit", lambda *args: None)
    world = make_synthetic_campaign(name="Faces of SD 1.5, RV 5.1 and SDXL", n_prompts=30)
    job = start_report_job(
        title="Face Score v1 vs v2 against 6 annotators",
        campaigns=[world.campaign],
        metric_versions=[world.tracks, world.unrelated, world.image_level],
        settings={"n_boot": 200, "breakdown_n_boot": 50},
        created_by=researcher,
    )
    progress.run(job.pk, run_report_job)
    report = Report.objects.get(job=job)
    page = no_js_page

    # The shared log_in waits for "/", where a researcher is redirected on to the campaigns.
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(researcher.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/research/campaigns/")
    page.get_by_role("link", name="Reports").click()
    page.get_by_role("link", name=report.title).click()
    expect(page.get_by_role("heading", name=report.title)).to_be_visible()

    headline = page.locator("#headline")
    expect(headline.get_by_role("row")).to_have_count(
        1 + 3 + 1
    )  # header, three metrics, human ceiling
    tracks_row = headline.get_by_role("row", name=metric_name(world.tracks))
    expect(tracks_row.locator("td.best").first).to_be_visible()
    expect(headline.get_by_role("row", name="Human ceiling")).to_be_visible()

    # Every figure is inline SVG with real size on screen, and links to its SVG and PNG files.
    figures = page.locator("figure svg")
    expect(figures).to_have_count(5)
    for i in range(5):
        box = figures.nth(i).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100
    expect(page.locator("#figure-forest").get_by_role("link", name="PNG")).to_have_attribute(
        "href", f"/research/reports/{report.pk}/figures/forest.png?download=1"
    )
    expect(page.locator("#leaderboard").get_by_role("row")).to_have_count(1 + 3)
    expect(page.locator("#comparison")).to_contain_text("a − b")
    page.screenshot(path=str(shots / "report.png"))
