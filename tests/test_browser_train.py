"""The Train and Compare pages in a real browser (Debian's Chromium, driven by Playwright) against `streamlit run`.

Screenshots go to test-artifacts/.
"""

import pytest

from browser import ARTIFACTS, CHROMIUM, launch_chromium, served_app
from fewshot import runs
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 120_000  # generous: two cores shared by the app, its training processes and the browser
# Points of the curve named `name`, in each plotly chart of the page.
POINTS = """name => [...document.querySelectorAll('.js-plotly-plot')].map(
    plot => Math.min(...(plot.data || []).filter(t => t.name === name).map(t => t.x.length)))"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, data_root):
    """The app on a free local port, with its runs in a temporary folder: (url, runs folder)."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    folder = tmp_path_factory.mktemp("browser")
    try:
        with served_app(folder, FEWSHOT_RUNS=str(folder / "runs"), FEWSHOT_CHECKPOINTS=str(folder / "checkpoints"),
                        FEWSHOT_DATA=data_root) as url:
            yield url, folder / "runs"
    finally:
        for run in runs.list_runs(folder / "runs"):
            if run.is_running():
                runs.stop(run)


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(app, browser):
    """A browser tab on the app's home page. The first visit after the server starts is reloaded: Streamlit
    treats that session in its legacy pages/-folder mode until app.py has called st.navigation once."""
    url, _ = app
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("heading", name="Few-shot learning with MAML").wait_for()
    page.reload()
    page.get_by_role("heading", name="Few-shot learning with MAML").wait_for()
    yield page
    page.close()


def test_train_page_shows_a_live_chart_and_stops(app, page):
    _, runs_folder = app
    page.get_by_role("link", name="Train").click()
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_role("button", name="Stop training").wait_for()
    assert page.get_by_role("spinbutton", name="channels").input_value() == "32"  # the form keeps the preset's values
    _wait_for_points(page, "meta-train", 3, charts=1)
    _wait_for_points(page, "meta-train", page.evaluate(POINTS, "meta-train")[0] + 1, charts=1)  # it grows
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "train-running.png", full_page=True)

    page.get_by_role("button", name="Stop training").click()
    page.get_by_role("button", name="Keep checkpoint for the Draw page").wait_for()  # the page saw the run end
    [run] = runs.list_runs(runs_folder)
    assert run.status() == runs.STOPPED
    assert run.checkpoint.exists()
    page.screenshot(path=ARTIFACTS / "train-stopped.png", full_page=True)


def test_compare_page_overlays_maml_and_fomaml_and_stops_them(app, page):
    _, runs_folder = app
    page.get_by_role("link", name="Compare").click()
    page.get_by_role("button", name="Start MAML and FOMAML").click()
    page.get_by_role("button", name="Stop the running runs").wait_for()
    for curve in ("FOMAML · meta-train", "MAML · meta-train"):  # both charts: against iterations and seconds
        _wait_for_points(page, curve, 3, charts=2)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "compare-running.png", full_page=True)

    page.get_by_role("button", name="Stop the running runs").click()
    page.get_by_role("button", name="Stop the running runs").wait_for(state="detached")
    compared = runs.latest_comparison(runs.list_runs(runs_folder))
    assert sorted(run.config().algorithm for run in compared) == ["fomaml", "maml"]
    wait_for(lambda: all(run.status() == runs.STOPPED for run in compared), "both runs to stop")
    page.screenshot(path=ARTIFACTS / "compare-stopped.png", full_page=True)


def _wait_for_points(page, curve: str, at_least: int, charts: int) -> None:
    """Waits until each of the page's `charts` plotly charts draws at least `at_least` points of `curve`."""
    page.wait_for_function(f"(points => points.length == {charts} && points.every(n => n >= {at_least}))"
                           f"(({POINTS})('{curve}'))", timeout=TIMEOUT_MS)
