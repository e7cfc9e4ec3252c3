"""Serving the app on 127.0.0.1 and driving it with Debian's Chromium, for the browser tests."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium")
HOME_HEADING = "Few-shot learning with MAML"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'  # no script run going on
# Whether the toolbar of a canvas (fabric.js' upper canvas, the argument) has slid in, above it: on hover it
# moves up out of the canvas' top and fades in; until it is done it lies over the canvas and takes strokes.
TOOLBAR_SHOWN = """canvas => { const toolbar = canvas.closest(".dc-root").querySelector(":scope > .dc-toolbar");
    return getComputedStyle(toolbar).opacity === "1" && toolbar.getAnimations().length === 0; }"""
# The form's fields (labels in app_ui.field_label) set to a run that takes a fraction of a second an iteration.
TINY_FORM = {"channels": "8", "conv blocks": "2", "tasks per meta-update": "2", "meta-updates": "100000",
             "validate every": "3", "validation tasks": "4", "save every": "3", "test tasks": "10",
             "1st vs 2nd order every": "3"}  # so that MAML's probe charts are there too, from the start
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@contextmanager
def served_app(folder: Path, **environment):
    """`streamlit run app.py` on a free local port, its log in `folder`, `environment` added: yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(folder / "streamlit.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.address",
                                   "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                                   "--browser.gatherUsageStats", "false"],
                                  cwd=REPO, env=dict(os.environ, **environment), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_for_health(url, server)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# How ForwardMsg script_finished says that a run of the page, or of one of its fragments, ended
FINISHED_RUN = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


class ScriptRuns:
    """How many script runs the server has finished for a page: the ForwardMsg script_finished messages on its
    websocket. (The page's data-test-script-state attribute misses a run that begins and ends between two renders,
    as a fragment's rerun of a few milliseconds does.) Playwright delivers the messages while it is busy in a call,
    so wait with page.wait_for_timeout, not time.sleep."""

    def __init__(self, page):
        self.finished = 0
        page.on("websocket", lambda websocket: websocket.on("framereceived", self._received))

    def _received(self, payload) -> None:
        if isinstance(payload, bytes):
            message = ForwardMsg.FromString(payload)
            if message.WhichOneof("type") == "script_finished" and message.script_finished in FINISHED_RUN:
                self.finished += 1

    def wait_since(self, page, finished: int, timeout_ms: int) -> None:
        """Waits until a run has finished since `finished` had, and the page shows none running."""
        deadline = time.monotonic() + timeout_ms / 1000
        while self.finished <= finished:
            if time.monotonic() > deadline:
                raise AssertionError(f"no script run finished within {timeout_ms / 1000:g} s")
            page.wait_for_timeout(50)
        page.wait_for_selector(IDLE)


def open_app_page(browser, url: str, viewport: dict, link: str, heading, timeout_ms: int, init_script: str = "",
                  watch=None):
    """A new tab on the app's page `link` (its name in the navigation), once the page's `heading` shows; `watch`,
    if given, is called with the tab before it loads anything (ScriptRuns, say).

    The first visit after the server starts runs in Streamlit's legacy pages/ mode until app.py has called
    st.navigation once: the tab opens Home, reloads it, then follows the navigation's link.
    """
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(timeout_ms)
    if init_script:
        page.add_init_script(init_script)
    if watch:
        watch(page)
    page.goto(url)
    page.get_by_role("heading", name=HOME_HEADING).wait_for()
    page.reload()
    page.get_by_role("heading", name=HOME_HEADING).wait_for()
    page.get_by_role("link", name=link).click()
    page.get_by_role("heading", name=heading).wait_for()
    return page


def _wait_for_health(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer at {url} within {timeout} s")


# For layout checks: whether elements are cut by the viewport, a parent's overflow or their own box.
_VISIBILITY = """element => {
    const box = element.getBoundingClientRect();
    const problems = [];
    if (box.left < 0 || box.right > window.innerWidth) problems.push("outside the viewport horizontally");
    let parent = element.parentNode;
    while (parent) {
        if (parent instanceof ShadowRoot) { parent = parent.host; continue; }  // out of a component's shadow DOM
        if (!(parent instanceof Element) || parent === document.documentElement) break;
        const style = getComputedStyle(parent), outer = parent.getBoundingClientRect();
        const clipsX = style.overflowX !== "visible", clipsY = style.overflowY !== "visible";
        const outX = box.left < outer.left - 0.5 || box.right > outer.right + 0.5;
        const outY = box.top < outer.top - 0.5 || box.bottom > outer.bottom + 0.5;
        if ((clipsX && outX) || (clipsY && outY))
            problems.push(`cut by ${parent.tagName.toLowerCase()}.${parent.className} (overflow ${style.overflow})`);
        parent = parent.parentNode;
    }
    return {box: {x: box.x, y: box.y, width: box.width, height: box.height}, problems};
}"""


def visibility(locator) -> dict:
    """The element's box in the viewport and how it is cut, if it is: outside the viewport horizontally, or cut
    by a parent whose overflow hides or scrolls it. It is scrolled into view first."""
    locator.scroll_into_view_if_needed()
    return locator.evaluate(_VISIBILITY)


TRUNCATABLE = 'button, input, [data-testid="stWidgetLabel"], [data-baseweb="tag"]'  # labels, values, chosen options


def truncated_texts(page, selector: str = TRUNCATABLE) -> list:
    """The text of every visible element matching `selector`, or holding one inside, whose content is wider than
    its box: a label cut with an ellipsis or hidden overflow, or a value an input shows only in part."""
    return page.evaluate("""selector => [...document.querySelectorAll(selector)].flatMap(element =>
        [element, ...element.querySelectorAll("*")]
            .filter(e => e.offsetParent !== null && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
            .map(() => element.value || element.innerText))
        .filter((text, i, all) => text && all.indexOf(text) === i)""",
                         selector)


# Charts of the Train and Compare pages (Vega-Lite): for each, whether it is drawn (on screen, with a line of at
# least two points), the points of its longest line, and an id that its DOM node keeps while it lives, so that a
# chart re-created (blank until drawn again) shows as a new id.
CHARTS = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].map(chart => {
    if (!chart.__chartId) { window.__charts = (window.__charts || 0) + 1; chart.__chartId = window.__charts; }
    const lines = [...chart.querySelectorAll('.mark-line path')].map(
        path => ((path.getAttribute('d') || '').match(/[ML]/g) || []).length);
    const height = chart.getBoundingClientRect().height;
    return {id: chart.__chartId, points: Math.max(0, ...lines), drawn: height >= 50 && Math.max(0, ...lines) >= 2,
            top: chart.getBoundingClientRect().top, bottom: chart.getBoundingClientRect().bottom};
})"""
