"""The Train and Compare pages in a real browser (Debian's Chromium, driven by Playwright) against `streamlit run`.

Screenshots go to test-artifacts/. Runs are tiny (a conv net of 8 channels, 2 tasks a meta-update), so that the
two cores that serve the app, train and run the browser are not the bottleneck of the test.
"""

import os
import signal
import time

import pytest

from browser import (ARTIFACTS, CHARTS, CHROMIUM, TINY_FORM, launch_chromium, open_app_page, served_app,
                     truncated_texts)
from fewshot import runs
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 120_000  # generous: two cores shared by the app, its training processes and the browser
SCREENS = {"projector": (1024, 768), "laptop": (1400, 900)}
TITLES = {"Train": "Train", "Compare": "MAML and FOMAML"}  # each page's heading
LABELS = 'button, [data-testid="stWidgetLabel"], [data-baseweb="tag"]'  # the form's number inputs may scroll


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
        stop_all(folder / "runs")


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def open_page(app, browser):
    """Opens a browser tab of `size` (SCREENS) on the app's page `name`; closes it, and stops the runs, at the
    end."""
    url, runs_folder = app
    pages = []

    def open_page(name: str, size: str = "laptop"):
        width, height = SCREENS[size]
        pages.append(open_app_page(browser, url, {"width": width, "height": height}, name, TITLES[name], TIMEOUT_MS))
        return pages[-1]

    yield open_page
    for page in pages:
        page.close()
    stop_all(runs_folder)


def stop_all(runs_folder) -> None:
    for run in runs.list_runs(runs_folder):
        if run.is_running():
            runs.stop(run)
            wait_for(lambda: not run.is_running(), f"{run.name} to stop")


def fill_tiny(page) -> None:
    page.get_by_text("Monitoring and engine").click()  # opens the expander of the last fields
    for label, value in TINY_FORM.items():
        field = page.get_by_role("spinbutton", name=label, exact=True)
        field.fill(value)
        field.press("Tab")


def wait_for_charts(page, count: int, points: int = 3) -> None:
    """Until `count` charts are drawn, each with a line of at least `points` points."""
    page.wait_for_function(f"(charts => charts.filter(c => c.drawn && c.points >= {points}).length >= {count})"
                           f"(({CHARTS})())", timeout=TIMEOUT_MS)


def in_first_screen(page, selector: str) -> bool:
    """Whether the element's top edge lies within the window, without scrolling."""
    box = page.locator(selector).first.bounding_box()
    return box is not None and 0 <= box["y"] < page.viewport_size["height"]


@pytest.mark.parametrize("size", list(SCREENS))
def test_after_start_the_run_is_in_the_first_screen_and_after_a_reload_too(app, open_page, size):
    _, runs_folder = app
    page = open_page("Train", size)
    fill_tiny(page)
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("Started run").first.wait_for()  # something says that the run began
    run = runs.list_runs(runs_folder)[0]  # the newest: the one this test started
    page.get_by_role("button", name="Stop training").wait_for()
    wait_for_charts(page, 2)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"train-started-{size}.png")
    assert in_first_screen(page, '[data-testid="stProgress"]') and page.evaluate("window.scrollY") < 100
    assert all(chart["top"] < page.viewport_size["height"] for chart in page.evaluate(CHARTS))
    assert run.name in page.locator('[data-testid="stProgress"]').first.inner_text()
    page.reload()
    page.get_by_role("heading", name="Train").wait_for()
    wait_for_charts(page, 2)
    assert in_first_screen(page, '[data-testid="stProgress"]')
    assert all(chart["top"] < page.viewport_size["height"] for chart in page.evaluate(CHARTS))


def test_stop_is_acknowledged_by_the_press_itself_and_the_run_saves_its_checkpoint(app, open_page):
    """The training process is paused (SIGSTOP) before the press, so it cannot end meanwhile: the page must say
    "Stopping ..." on the press alone, not when the run ends. Resumed, the run stops and saves as always."""
    _, runs_folder = app
    page = open_page("Train")
    fill_tiny(page)
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_role("button", name="Stop training").wait_for()
    wait_for_charts(page, 2)
    run = runs.list_runs(runs_folder)[0]  # the newest: the one this test started
    pid = run.launch()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        pressed = time.monotonic()
        page.get_by_role("button", name="Stop training").click()
        stopping = page.get_by_role("button", name="Stopping ...")
        stopping.wait_for()
        print(f"Stop acknowledged {time.monotonic() - pressed:.2f} s after the press")  # -s shows it
        assert stopping.is_disabled() and run.is_running()
        assert "stopping" in page.locator('[data-testid="stProgress"]').first.inner_text()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not run.is_running(), "the run to stop")
    assert run.status() == runs.STOPPED and run.checkpoint.exists()
    page.get_by_role("button", name="Keep checkpoint for the Draw page").wait_for()  # the page saw the run end
    page.get_by_role("button", name="Evaluate now").wait_for()  # a stopped run may be tested


def test_compare_charts_are_updated_in_place_and_never_blank_while_two_runs_train(app, open_page):
    """The chart region, sampled every 200 ms for 10 s while MAML and FOMAML train (5 redraws of the page's live
    part, every 2 s): every frame shows all four charts drawn, and none is re-created (a re-created chart is
    blank until drawn again, and a new element: the first redraw that re-created one would fail)."""
    page = open_page("Compare")
    fill_tiny(page)
    page.get_by_role("button", name="Start MAML and FOMAML").click()
    page.get_by_role("button", name="Stop both runs").wait_for()
    wait_for_charts(page, 4 + 3)  # loss and accuracy against iterations and seconds; MAML's three probe charts
    first = page.evaluate(CHARTS)
    frames, started = [], time.monotonic()
    while time.monotonic() - started < 10:
        frames.append(page.evaluate(CHARTS))
        page.wait_for_timeout(200)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "compare-running.png", full_page=True)
    blank = [frame for frame in frames if sum(chart["drawn"] for chart in frame) < len(first)]
    assert not blank, f"{len(blank)} of {len(frames)} frames blank, as {blank[0]}"
    assert {chart["id"] for frame in frames for chart in frame} == {chart["id"] for chart in first}
    assert max(chart["points"] for chart in frames[-1]) > max(chart["points"] for chart in first)  # it grew

    page.get_by_role("button", name="Stop both runs").click()
    page.get_by_role("button", name="Stopping ...").wait_for()
    compared = runs.latest_comparison(runs.list_runs(app[1]))
    assert sorted(run.config().algorithm for run in compared) == ["fomaml", "maml"]
    wait_for(lambda: all(run.status() == runs.STOPPED for run in compared), "both runs to stop")
    page.get_by_text("MAML: ").first.wait_for()  # the takeaway, computed from the two runs


@pytest.mark.parametrize("name, start, stop", [("Train", "Start", "Stop training"),
                                               ("Compare", "Start MAML and FOMAML", "Stop both runs")])
def test_nothing_is_truncated_on_a_projector_with_the_sidebar_open(app, open_page, name, start, stop):
    """1024x768 with the sidebar open, the run it started training and the form open: no button, label or
    chosen run cut."""
    page = open_page(name, "projector")
    assert page.get_by_test_id("stSidebar").is_visible()
    fill_tiny(page)
    page.get_by_role("button", name=start, exact=True).click()
    page.get_by_role("button", name=stop).wait_for()  # the run it started, shown
    wait_for_charts(page, 2)
    page.get_by_text(f"New {'run' if name == 'Train' else 'comparison'}", exact=True).click()  # open the form
    page.get_by_role("button", name=start, exact=True).wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name.lower()}-projector.png", full_page=True)
    assert page.get_by_role("button", name=stop).first.is_visible()  # a redraw may show the old one a moment more
    assert truncated_texts(page, LABELS) == []
