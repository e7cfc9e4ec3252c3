"""The Draw page in a real browser (Debian's Chromium, driven by Playwright) against `streamlit run`: draw five
shapes with the mouse, one per class, adapt a trained checkpoint to them, and classify new drawings of two of
them, a circle and a triangle.

It uses the shipped checkpoints/maml-conv-5way.safetensors. The screenshots go to test-artifacts/.
"""

import io
import re
import shutil

import pytest
from PIL import Image

from browser import (ARTIFACTS, CHROMIUM, IDLE, REPO, TOOLBAR_SHOWN, ScriptRuns, launch_chromium, open_app_page,
                     served_app, truncated_texts, visibility)
from canvas_drawings import QUERY, QUERY_NAME, SECOND_QUERY, SECOND_QUERY_NAME, SHAPES
from fewshot.adaptation import DEFAULT_CHECKPOINT
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 120_000  # generous: two cores shared by the app, maybe training runs, and the browser
RUNS = {}  # each page's ScriptRuns


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on a free local port, offering the shipped default checkpoint and no runs."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    folder = tmp_path_factory.mktemp("browser-draw")
    (folder / "checkpoints").mkdir()
    shutil.copyfile(REPO / "checkpoints" / DEFAULT_CHECKPOINT, folder / "checkpoints" / DEFAULT_CHECKPOINT)
    with served_app(folder, FEWSHOT_RUNS=str(folder / "runs"), FEWSHOT_CHECKPOINTS=str(folder / "checkpoints")) as url:
        yield url


@pytest.fixture
def page(app):
    yield from draw_page(app, {"width": 1400, "height": 2600})  # the whole page, unscrolled


@pytest.fixture
def projector(app):
    """The Draw page at 1024x768, a common projector's size, with the sidebar open."""
    yield from draw_page(app, {"width": 1024, "height": 768})


def draw_page(app, viewport: dict):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_app_page(browser, app, viewport, "Draw", re.compile("^Draw"), TIMEOUT_MS,
                             watch=lambda page: RUNS.setdefault(page, ScriptRuns(page)))
        yield page
        browser.close()


def test_five_drawn_characters_and_a_new_drawing_is_recognised(page):
    canvases = page.locator("canvas.upper-canvas")  # fabric.js' drawing layer, inside the component's shadow DOM
    canvases.nth(len(SHAPES)).wait_for()  # the five classes' canvases, then the query's
    page.wait_for_selector(IDLE)  # the page's first run, before the runs that the test's actions cause
    for c, name in enumerate(SHAPES):
        page.get_by_label(f"Class {c + 1}", exact=True).fill(name)
        _rerun(page, lambda: page.keyboard.press("Enter"))
    for index, strokes in enumerate(list(SHAPES.values()) + [QUERY]):
        _draw(page, canvases.nth(index), strokes, empty_after=len(SHAPES) - index)

    _rerun(page, page.get_by_role("button", name="Adapt").click)
    prediction = page.get_by_text(re.compile("^Prediction after adaptation"))
    page.locator(".js-plotly-plot").nth(1).wait_for()  # both charts: the probabilities, the inner loop
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "draw-adapted.png", full_page=True)
    assert re.match(rf"Prediction after adaptation: {QUERY_NAME} \(\d+%\)", prediction.inner_text())
    assert "Support accuracy" in page.locator("body").inner_text()

    # Another query, of another class, so that a model answering one class whatever it sees cannot pass.
    _rerun(page, page.get_by_role("button", name="Clear the query").click)
    _draw(page, canvases.nth(len(SHAPES)), SECOND_QUERY, empty_after=0)
    page.screenshot(path=ARTIFACTS / "draw-second-query.png", full_page=True)
    assert re.match(rf"Prediction after adaptation: {SECOND_QUERY_NAME} \(\d+%\)", prediction.inner_text())

    # Four classes hide the fifth row; back at five, the browser's canvases would show blank and the fifth name
    # would be gone. They are redrawn and kept, the support set is as it was, and the prediction stands.
    page.get_by_text("Model and settings", exact=True).click()  # the settings' expander
    for ways in (4, 5):
        page.get_by_label("Classes (N ways)").fill(str(ways))
        _rerun(page, lambda: page.keyboard.press("Enter"))
    _redrawn(page, canvases, len(SHAPES), "draw-fifth-class-back.png")  # as drawn, not blank
    assert page.get_by_label("Class 5", exact=True).input_value() == list(SHAPES)[4]
    assert re.match(rf"Prediction after adaptation: {SECOND_QUERY_NAME} \(\d+%\)", prediction.inner_text())

    # Another page and back: the names, the drawings (on screen too) and the prediction are all still there.
    _rerun(page, page.get_by_role("link", name="Home").click)
    page.get_by_role("heading", name="Few-shot learning with MAML").wait_for()
    _rerun(page, page.get_by_role("link", name="Draw").click)
    page.get_by_role("heading", name=re.compile("^Draw")).wait_for()
    _redrawn(page, canvases, len(SHAPES) + 1, "draw-after-another-page.png")  # the query's canvas too
    assert [page.get_by_label(f"Class {c + 1}", exact=True).input_value() for c in range(len(SHAPES))] == list(SHAPES)
    assert "empty" not in page.locator("body").inner_text().split("\n")
    assert re.match(rf"Prediction after adaptation: {SECOND_QUERY_NAME} \(\d+%\)", prediction.inner_text())


def test_a_stroke_survives_a_reload_of_the_page(page):
    """The page's URL names its desk (fewshot/desks.py): reloaded, as students press F5, or reconnected to a
    restarted server, the page draws the strokes again, and the model sees them."""
    canvases = page.locator("canvas.upper-canvas")
    canvases.nth(len(SHAPES)).wait_for()
    page.wait_for_selector(IDLE)
    _draw(page, canvases.nth(0), SHAPES["X"], empty_after=len(SHAPES))
    assert re.search(r"[?&]desk=[\w-]{22}(&|$)", page.url), page.url

    _rerun(page, page.reload)
    canvases.nth(len(SHAPES)).wait_for()
    _redrawn(page, canvases, 1, "draw-after-reload.png")
    assert not _inked(canvases.nth(1))  # the stroke is where it was drawn, not everywhere
    assert page.locator("body").inner_text().split("\n").count("empty") == len(SHAPES)  # its 28x28 image shows


def test_on_a_projector_nothing_is_cut_and_the_query_is_in_the_first_two_screens(projector, data_root):
    page = projector
    sidebar = page.locator('[data-testid="stSidebar"]').bounding_box()
    assert sidebar["x"] >= 0 and sidebar["width"] > 200  # open
    canvases = page.locator("canvas.upper-canvas")
    canvases.nth(len(SHAPES)).wait_for()
    page.wait_for_selector(IDLE)
    last = canvases.nth(len(SHAPES)).bounding_box()  # unscrolled: where it is on the page
    assert last["y"] + last["height"] <= 2 * 768, last  # the five classes' canvases and the query's
    for index in range(len(SHAPES) + 1):
        seen = visibility(canvases.nth(index))
        assert seen["problems"] == [] and min(seen["box"]["width"], seen["box"]["height"]) >= 140, (index, seen)
    page.get_by_label("Class 1", exact=True).fill("Old Church Slavonic (Cyrillic) #38")  # the longest fill's
    _rerun(page, lambda: page.keyboard.press("Enter"))
    assert truncated_texts(page) == []  # no button label cut, no class name shown in part

    _rerun(page, page.get_by_role("button", name="Fill from Omniglot").click)
    _rerun(page, page.get_by_role("button", name="Adapt").click)
    prediction = page.get_by_text(re.compile("^Prediction after adaptation"))
    page.locator(".js-plotly-plot").nth(1).wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "draw-projector.png")
    assert truncated_texts(page) == []
    query = page.locator('[data-testid="stImage"]').nth(2 * len(SHAPES))  # after each class' drawing and its 28x28
    prediction.scroll_into_view_if_needed()
    beside, drawn = prediction.bounding_box(), query.bounding_box()
    assert beside["x"] > drawn["x"] + drawn["width"] and abs(beside["y"] - drawn["y"]) < 200, (beside, drawn)


def test_the_canvas_toolbar_covers_nothing_and_a_stroke_begun_as_the_pointer_enters_counts(projector):
    """The toolbar of the third class' canvas, below the first's: shown, it covers no other element; before it
    shows, a stroke started 10 px under the canvas' top edge at once is drawn, not taken by the hidden toolbar."""
    page = projector
    canvases = page.locator("canvas.upper-canvas")
    canvases.nth(len(SHAPES)).wait_for()
    page.wait_for_selector(IDLE)
    canvas = canvases.nth(2)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 70, box["y"] - 60)  # above the canvas, then into it and drawing straight away
    ended = _runs_ended(page)
    page.mouse.move(box["x"] + 70, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 110, box["y"] + 20, steps=4)
    page.mouse.move(box["x"] + 110, box["y"] + 120, steps=4)
    page.mouse.up()
    _wait_for_a_run_since(page, ended)
    page.wait_for_function("() => document.body.innerText.split('\\n').filter(l => l === 'empty').length === 5")

    page.mouse.move(box["x"] + 70, box["y"] + 70)
    page.wait_for_function(TOOLBAR_SHOWN, arg=canvas.element_handle())
    covered = page.evaluate("""canvas => {
        const toolbar = canvas.closest(".dc-root").querySelector(":scope > .dc-toolbar").getBoundingClientRect();
        const canvases = [...document.querySelectorAll('[data-testid="stBidiComponentIsolated"]')]
            .map(host => host.shadowRoot.querySelector("canvas.upper-canvas"));
        const others = [...canvases, ...document.querySelectorAll("h1, h2, h3, input, button, img, p")];
        return others.filter(e => { const r = e.getBoundingClientRect();
            return r.width > 0 && r.left < toolbar.right && r.right > toolbar.left && r.top < toolbar.bottom
                && r.bottom > toolbar.top; }).map(e => e.tagName + " " + (e.innerText || e.className));
    }""", canvas.element_handle())
    assert covered == []


def test_the_app_fetches_nothing_from_beyond_its_server(app):
    """A classroom's network may have no internet: the page icon and all else come from the app's server. Every
    request elsewhere is refused and noted while Home and the Draw page load."""
    from playwright.sync_api import sync_playwright
    elsewhere = []

    def only_the_app(route):
        if route.request.url.startswith((app, "data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.route("**/*", only_the_app)
        page.goto(app)
        page.get_by_role("heading", name="Few-shot learning with MAML").wait_for()
        page.reload()
        page.get_by_role("link", name="Draw").click()
        page.locator("canvas.upper-canvas").first.wait_for()
        page.wait_for_selector(IDLE)
        browser.close()
    assert elsewhere == []


def _draw(page, canvas, strokes: list, empty_after: int) -> None:
    """Draws strokes of canvas points with the mouse, as a person would, then waits for the script run that the
    drawing causes (the canvas sends it 200 ms after the last stroke) to end, and the page to show the 28x28 image
    the model sees in place of the slot's "empty", leaving `empty_after` empty slots."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(TOOLBAR_SHOWN, arg=canvas.element_handle())
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=3)
        ended = _runs_ended(page)
        page.mouse.up()
    _wait_for_a_run_since(page, ended)
    page.wait_for_function(f"() => document.body.innerText.split('\\n').filter(l => l === 'empty').length"
                           f" === {empty_after}")


def _redrawn(page, canvases, count: int, screenshot: str) -> None:
    """Waits for the first `count` canvases to come back and fabric.js to redraw their kept strokes on them;
    takes a screenshot."""
    canvases.nth(count - 1).wait_for()
    wait_for(lambda: all(_inked(canvases.nth(c)) for c in range(count)), "the canvases redrawn", timeout=60)
    page.screenshot(path=ARTIFACTS / screenshot, full_page=True)


def _inked(canvas) -> bool:
    """Whether the canvas shows a drawing: dark pixels in a screenshot of it."""
    image = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
    return sum(image.histogram()[:128]) > 50


def _rerun(page, action) -> None:
    """Does `action`, which makes the app run the page's script again, and waits for that run to end: a canvas
    drawn on mid-run may be reset."""
    ended = _runs_ended(page)
    action()
    _wait_for_a_run_since(page, ended)


def _runs_ended(page) -> int:
    return RUNS[page].finished


def _wait_for_a_run_since(page, ended: int) -> None:
    """Waits until a script run has ended since `ended` had, and none is running."""
    RUNS[page].wait_since(page, ended, TIMEOUT_MS)
