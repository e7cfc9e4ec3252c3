"""A class on one server (issue 14): browser sessions drawing, adapting and classifying on the Draw page while
others press Start on the Train page, all at once, against `streamlit run app.py` on 127.0.0.1.

    python3 scripts/load_test.py --sessions 30 --drawers 20 --seconds 300 [--data-root DIR] [--json OUT] [--nice 19]

Each session is a Playwright browser context (its own cookies, so its own Streamlit session) in one headless
Chromium, all driven from one asyncio loop: one Playwright driver and one browser, where a thread per session
would need a driver and a browser each. The sessions open one a second. A drawer draws five characters and a
query once, then, until the time is up, presses Adapt, clears the query and draws another (classify). A starter
presses Start on the Train page for a tiny run at a staggered moment, then every --start-every seconds; past the
server's limit of runs the app queues the run (or refuses it, as before the queue): answers, not errors. Each
drawer adapts once, and each starter presses once, at least, however long the opening took. Every 0.5 s the
script counts the training processes of its runs folder and samples the memory and the CPU time of the server,
the trainers, the browser and itself, and the machine's available memory. At the end it stops the server, then
every run it started.

Every time is as the user sees it: from the click (or the pen lifted: the canvas sends the drawing 200 ms later)
until the page has received the end of the script run that the action caused, drawn it, is idle again and shows
the answer (the prediction, the 28x28 drawing, Start's message). For Adapt it also says how much of that the
script run took (until its end reached the browser) and the adaptation itself (the page's "Adapted in").
It prints a table and, with --json, writes every figure, every sample and every action. Exit status 1 when an
action went unanswered, a session was lost, an error was shown, a prediction was wrong, trainers exceeded the
limit or a run still trained after the stop. Speed is reported, not judged.

--nice 19 runs the browser (and this script's sessions) at the lowest priority: in a class the browsers run on
the students' machines, not on the server's cores. The CPU seconds printed say how much of the machine they took
(30 sessions on 2 cores: the browser 69 %, the server 6 %); scripts/browser_cost.py says what each action of one
session costs the browser and the server. On a machine with more cores, --server-cpus 0,1 --browser-cpus 2-15 runs
the server (and the trainers it starts) on the cores a class's server has, and the browser on others, as on the
students' machines: the fair measurement of the adapt time, which 2 cores shared with 30 browsers cannot give.
--without-browser plays the same class with sessions that send the page's messages themselves, on the websocket
(scripts/class_without_browser.py): the server's side of that measurement, on any machine.
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser import (CHROMIUM, FINISHED_RUN, HOME_HEADING, IDLE, TINY_FORM, TOOLBAR_SHOWN, launch_chromium,  # noqa: E402
                     served_app)
from canvas_drawings import QUERY, QUERY_NAME, SECOND_QUERY, SECOND_QUERY_NAME, SHAPES  # noqa: E402
from fewshot import limits, runs  # noqa: E402
from fewshot.adaptation import DEFAULT_CHECKPOINT  # noqa: E402
from fewshot.config import default_data_root  # noqa: E402
from playwright.async_api import TimeoutError as PlaywrightTimeoutError, async_playwright  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from waiting import wait_for  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}  # a laptop's
SAMPLE_EVERY = 0.5  # seconds between two samples of the processes
STOP_TIMEOUT = 60  # seconds the runs get to stop at the end, before they are killed
FORM_ATTEMPTS, FILL_TIMEOUT_MS = 5, 10_000  # a starter opens the Train page's form up to 5 times for one press
# A tiny run: TINY_FORM's sizes; validated, saved and tested as the form's first preset says, not as often as
# TINY_FORM does (every 3 iterations: a run of thousands would send thousands of points to each Train page every
# second).
RUN_SIZES = ("channels", "conv blocks", "tasks per meta-update")
# Start's answers that are no error: the run started, or it waits for a free place, or the queue is full.
STARTED, QUEUED, REFUSED = "Started run", re.compile(r"\bqueued\b", re.IGNORECASE), "waiting to train already"
ERROR_KINDS = ("error", "exception", "connection", "dialog")
EXCEPTION = '[data-testid="stException"]'  # Streamlit's box for an exception that the page did not catch
PREDICTION = re.compile(r"Prediction after adaptation: (.+) \(\d+%\)")
ADAPTED_IN = re.compile(r"Adapted in (\d+) ms")
EMPTY_SLOTS = "n => document.body.innerText.split('\\n').filter(line => line === 'empty').length === n"
PREDICTED = "() => document.body.innerText.includes('Prediction after adaptation')"
# In every page: window.shown lists every alert, exception, toast, connection status and dialog the page
# showed, each time one appears or its text changes, with its kind (error, warning, info, success, exception,
# toast, connection, dialog): an error that comes and goes between two looks is caught too.
SHOWN_LOG = """if (window.top === window) {
  window.shown = [];
  const SHOWN = '[data-testid="stAlertContainer"], [data-testid="stToast"], [data-testid="stConnectionStatus"], '
              + '[data-testid="stDialog"]';
  const kind = element => element.closest('[data-testid="stException"]') ? "exception"
    : element.dataset.testid === "stAlertContainer"
      ? element.querySelector('[data-testid^="stAlertContent"]').dataset.testid.slice(14).toLowerCase()
      : {stToast: "toast", stConnectionStatus: "connection", stDialog: "dialog"}[element.dataset.testid];
  const note = element => {  // its text, without its icon's name ("error", "warning", ...)
    const icons = [...element.querySelectorAll('[data-testid="stIconMaterial"], [data-testid$="DynamicIcon"]')]
      .map(icon => icon.innerText);
    const text = icons.reduce((text, icon) => text.replace(icon, ""), element.innerText).trim();
    if (text && element.shownText !== text) {
      element.shownText = text;
      window.shown.push({kind: kind(element), text});
    }
  };
  new MutationObserver(records => {
    const touched = new Set();
    for (const record of records) {
      const target = record.target.nodeType === Node.ELEMENT_NODE ? record.target : record.target.parentElement;
      if (target && target.closest(SHOWN)) touched.add(target.closest(SHOWN));
      for (const node of record.addedNodes)
        if (node.nodeType === Node.ELEMENT_NODE)
          [node, ...node.querySelectorAll(SHOWN)].filter(e => e.matches(SHOWN)).forEach(e => touched.add(e));
    }
    touched.forEach(note);
  }).observe(document, {subtree: true, childList: true, characterData: true});
}"""
# The text of the message that answers Start on the Train page, above the form (a note in it may speak of the
# queue too), while one shows; else null.
START_ANSWER = """() => [...document.querySelectorAll('[data-testid="stAlertContainer"]')]
    .filter(e => !e.closest('[data-testid="stForm"]')).map(e => e.innerText)
    .find(text => /Started run|waiting to train already|\\bqueued\\b/i.test(text)) ?? null"""
ERRORS_NOW = """() => [...document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
    .map(e => e.innerText)"""
# Start's answer, or else an error, or an exception; else null.
ANSWERED = f"() => ({START_ANSWER})() ?? ({ERRORS_NOW})()[0] ?? null"
# In every page: window.framesDrawn, how many messages the page had received from the server, on its last
# websocket, two animation frames before: the page has handled them and drawn what they said.
FRAMES_DRAWN = """window.framesDrawn = 0;
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    let received = 0;
    window.framesDrawn = 0;
    this.addEventListener("message", () => {
      const count = ++received;
      requestAnimationFrame(() => requestAnimationFrame(() => {
        window.framesDrawn = Math.max(window.framesDrawn, count); }));
    });
  }
};"""


@dataclass
class Action:
    session: int
    kind: str  # open, draw, adapt, clear, classify, start; redraw (a live chart's, --without-browser)
    at: float  # seconds since the sessions began
    seconds: float | None = None  # until answered; None: not answered within the action timeout
    outcome: str = ""  # adapt, classify: the class predicted; start: started, queued, refused or error
    right: bool | None = None  # adapt, classify: whether it is the class the query was drawn of
    server_ms: int | None = None  # adapt, classify: the adaptation's time, as the page says
    sent_seconds: float | None = None  # rerun: until the page sent its request to the server
    run_seconds: float | None = None  # rerun: until the server's message that its script run had finished came


class Session:
    """One browser context on one page of the app, and what it did."""

    def __init__(self, number: int, role: str, context, clock: float, timeout_s: float):
        self.number, self.role, self.context, self.clock = number, role, context, clock
        self.timeout_s = timeout_s
        self.page = None
        self.actions, self.shown, self.lost, self.doing = [], [], None, "waiting to open"
        self.lost_details = ""
        self.form_troubles = []  # starters: why the form could not be filled, each time (filled_form)
        self.finishes, self.run_finished, self.sent = [], asyncio.Event(), []
        self.cut_short = 0  # script runs that the server ended early for another run (FINISHED_EARLY_FOR_RERUN)

    def watch(self, websocket) -> None:
        """Notes, for each script run that the server finishes for the page, the number of the message that
        says so (ForwardMsg script_finished) on the page's websocket. (A count of the page's
        data-test-script-state changes, as the browser tests keep, misses a run that begins and ends between
        two renders, which a busy browser does; the page says nothing itself of having handled a run.)"""
        self.finishes, self.sent, frames = [], [], 0

        def received(payload) -> None:
            nonlocal frames
            frames += 1
            if isinstance(payload, bytes):
                message = ForwardMsg.FromString(payload)
                finished = message.script_finished if message.WhichOneof("type") == "script_finished" else None
                if finished in FINISHED_RUN:  # of the page, or of a fragment of it
                    self.finishes.append((frames, time.monotonic()))
                    self.run_finished.set()
                self.cut_short += finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN
        websocket.on("framereceived", received)
        websocket.on("framesent", lambda payload: self.sent.append(time.monotonic()))

    async def run_finished_since(self, finished: int) -> tuple:
        """Waits for the script run after the first `finished` runs to finish; returns the number of the
        message that said so and when it came (time.monotonic()). TimeoutError after the action timeout."""
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(self.finishes) <= finished:
                self.run_finished.clear()
                await asyncio.wait_for(self.run_finished.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise TimeoutError(f"no script run finished within {self.timeout_s:g} s") from None
        return self.finishes[finished]

    async def open(self, url: str, link: str, heading) -> None:
        """browser.open_app_page, with Playwright's async API: Home, reloaded, then the navigation's link."""
        async def load():
            self.page = await self.context.new_page()
            self.page.set_default_timeout(1000 * self.timeout_s)
            self.page.on("websocket", self.watch)
            await self.page.goto(url)
            await self.page.get_by_role("heading", name=HOME_HEADING).wait_for()
            await self.page.reload()
            await self.page.get_by_role("heading", name=HOME_HEADING).wait_for()
            await self.page.get_by_role("link", name=link).click()
            await self.page.get_by_role("heading", name=heading).wait_for()
            await self.page.wait_for_selector(IDLE)
        await self.timed("open", load)

    async def timed(self, kind: str, act, answered=None) -> Action:
        """Does `act()`, then `answered()` if given, and records the seconds they took as an Action of `kind`;
        `answered` may return the action's outcome."""
        action = Action(self.number, kind, round(time.monotonic() - self.clock, 3))
        self.actions.append(action)
        self.doing = kind
        tick = time.monotonic()
        await act()
        action.outcome = (await answered() if answered else None) or ""
        action.seconds = round(time.monotonic() - tick, 3)
        return action

    async def drawn_after_run(self, finished: int, shown: str = "() => true", argument=None):
        """Waits for the script run after the first `finished` to finish, the page to have drawn it and be
        idle, and the JavaScript function `shown` (of `argument`) to hold; returns what `shown` returned, and
        when the server said the run had finished (time.monotonic())."""
        frame, ended = await self.run_finished_since(finished)
        condition = (f"([frame, idle, argument]) => window.framesDrawn >= frame"
                     f" && document.querySelector(idle) !== null && ({shown})(argument)")
        return await self.page.wait_for_function(condition, arg=[frame, IDLE, argument]), ended

    async def rerun(self, kind: str, act, shown: str = "() => true", argument=None) -> Action:
        """An action whose answer is a script run: done once the run has finished, the page has drawn it and
        is idle, and the JavaScript function `shown` (of `argument`) is true, or the page shows an exception
        instead (the action's outcome then)."""
        await self.page.wait_for_selector(IDLE)
        finished, sent = len(self.finishes), len(self.sent)
        shown_or_exception = f"argument => ({shown})(argument) || document.querySelector('{EXCEPTION}') !== null"
        run_ended = []

        async def answered():
            run_ended.append((await self.drawn_after_run(finished, shown_or_exception, argument))[1])
            exception = self.page.locator(EXCEPTION)
            return "exception: " + first_line(await exception.first.inner_text()) if await exception.count() else ""
        action = await self.timed(kind, act, answered)
        action.run_seconds = round(run_ended[0] - self.clock - action.at, 3)
        if len(self.sent) > sent:  # the request of the run: the first message the page sent since
            action.sent_seconds = round(self.sent[sent] - self.clock - action.at, 3)
        return action

    async def collect(self) -> None:
        """Keeps what the page showed, and closes the context."""
        try:
            if self.page:
                self.shown = await self.page.evaluate("window.shown")
        except Exception as error:  # the page crashed or was closed: the session is lost, if not already
            self.lost = self.lost or f"page unreadable at the end: {first_line(error)}"
        await self.context.close()


async def drawer(session: Session, url: str, deadline: float) -> None:
    """Draws five characters and a query once; then Adapt, clear the query and draw another, until `deadline`
    (Adapt once at least)."""
    await session.open(url, "Draw", re.compile("^Draw"))
    page = session.page
    canvases = page.locator("canvas.upper-canvas")  # fabric.js' drawing layers: the classes', then the query's
    for index, strokes in enumerate(SHAPES.values()):
        await draw(session, "draw", canvases.nth(index), strokes, EMPTY_SLOTS, len(SHAPES) - index)
    queries = itertools.cycle([(SECOND_QUERY, SECOND_QUERY_NAME), (QUERY, QUERY_NAME)])
    await draw(session, "draw", canvases.nth(len(SHAPES)), QUERY, EMPTY_SLOTS, 0)
    expected = QUERY_NAME
    while True:
        await predicted(session, await session.rerun("adapt", page.get_by_role("button", name="Adapt").click,
                                                      PREDICTED), expected)
        if time.monotonic() > deadline:
            break
        await session.rerun("clear", page.get_by_role("button", name="Clear the query").click, EMPTY_SLOTS, 1)
        strokes, expected = next(queries)
        await predicted(session, await draw(session, "classify", canvases.nth(len(SHAPES)), strokes, PREDICTED),
                        expected)


async def draw(session: Session, kind: str, canvas, strokes: list, shown: str, argument=None) -> Action:
    """Draws the strokes with the mouse, as test_browser_draw does; the action's time runs from the pen lifted
    at the end of the last stroke until the script run that the drawing causes has ended and `shown` holds."""
    page = session.page
    session.doing = kind
    await page.wait_for_selector(IDLE)  # a canvas drawn on during a run may be reset
    await canvas.scroll_into_view_if_needed()
    box = await canvas.bounding_box()
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.wait_for_function(TOOLBAR_SHOWN, arg=await canvas.element_handle())
    for number, stroke in enumerate(strokes):
        await page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        await page.mouse.down()
        for x, y in stroke[1:]:
            await page.mouse.move(box["x"] + x, box["y"] + y, steps=3)
        if number < len(strokes) - 1:
            await page.mouse.up()
    return await session.rerun(kind, page.mouse.up, shown, argument)


async def predicted(session: Session, action: Action, expected_shape: str) -> None:
    """Notes the class the page predicts, whether it is right, and the adaptation's time the page states."""
    text = await session.page.locator("body").inner_text()
    prediction, adapted = PREDICTION.search(text), ADAPTED_IN.search(text)
    action.outcome = prediction.group(1) if prediction else action.outcome or "no prediction shown"
    action.right = action.outcome == f"Class {list(SHAPES).index(expected_shape) + 1}"  # the classes' default names
    action.server_ms = int(adapted.group(1)) if adapted else None


async def starter(session: Session, url: str, first_press: float, every: float, deadline: float,
                  iterations: int) -> None:
    """Presses Start on the Train page at `first_press`, then every `every` seconds until `deadline` (once at
    least)."""
    await session.open(url, "Train", "Train")
    for press in itertools.count():
        moment = first_press + press * every
        if press and moment >= deadline:
            break
        await asyncio.sleep(max(0.0, moment - time.monotonic()))
        sizes = {label: TINY_FORM[label] for label in RUN_SIZES}
        await press_start(session, {**sizes, "meta-updates": str(iterations)})


async def press_start(session: Session, fields: dict) -> None:
    """Opens the form, fills it with `fields` (labels to values) and presses Start. The answer is what the
    page shows once the script run of the press has finished: started, queued, refused, or an error."""
    page = session.page
    start = page.get_by_role("button", name="Start", exact=True)
    session.doing = "filling the form"
    for attempt in range(FORM_ATTEMPTS):
        if await filled_form(session, start, fields):
            break
    else:
        raise TimeoutError(f"the form could not be filled {FORM_ATTEMPTS} times before Start: "
                           + "; ".join(session.form_troubles[-FORM_ATTEMPTS:]))
    await page.wait_for_selector(IDLE)
    finished = len(session.finishes)

    async def answered():  # the run of the press shows its answer, and no earlier one's
        answer, _ = await session.drawn_after_run(finished, ANSWERED)
        return start_outcome(await answer.json_value())
    await session.timed("start", start.click, answered)


async def filled_form(session: Session, start, fields: dict) -> bool:
    """Opens the form unless open, and fills it; False, and why in session.form_troubles, when it closed, did
    not open, or was not on the page (then the page is asked again through its link, as a user would)."""
    page = session.page
    label = page.get_by_text("New run", exact=True)
    try:
        if not await label.is_visible():
            session.form_troubles.append("the form was not on the page: Train clicked again")
            await page.get_by_role("link", name="Train").click(timeout=FILL_TIMEOUT_MS)
            await label.wait_for(timeout=FILL_TIMEOUT_MS)
        if not await start.is_visible():
            await label.click(timeout=FILL_TIMEOUT_MS)
            await start.wait_for(timeout=FILL_TIMEOUT_MS)
        await page.wait_for_selector(IDLE)  # the form drawn again: what is typed before may be lost
        for name, value in fields.items():
            field = page.get_by_role("spinbutton", name=name, exact=True)
            await field.fill(value, timeout=FILL_TIMEOUT_MS)
            await field.press("Tab", timeout=FILL_TIMEOUT_MS)
        if await start.is_visible():
            return True
        session.form_troubles.append("the form closed while filled")
    except PlaywrightTimeoutError as error:
        form = "open" if await start.is_visible() else "closed"
        session.form_troubles.append(f"(the form {form} now) " + " ".join(str(error).split())[:1500])
    return False


def start_outcome(text: str) -> str:
    if QUEUED.search(text):
        return "queued"
    if STARTED in text:
        return "started"
    return "refused" if REFUSED in text else "error: " + text


async def session_life(session: Session, begin: float, work, folder: Path) -> None:
    """Waits for `begin`, then does `work`; a failed or unanswered action ends the session, which is lost: a
    screenshot of its page goes to `folder`."""
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    try:
        await work
    except Exception as error:  # Playwright's TimeoutError and Error: an action not answered, a page gone
        session.lost = f"{session.doing}: {first_line(error)}"
        session.lost_details = str(error)[:2000]  # Playwright's call log: what it waited for
        try:
            await session.page.screenshot(path=folder / f"lost-session-{session.number}.png", full_page=True)
        except Exception:  # noqa: BLE001 - no page, or a page that cannot draw: the error says enough
            pass
    finally:
        await session.collect()


async def class_at_work(url: str, args, clock: float) -> list:
    """Runs the sessions, timed from `clock` (time.monotonic()); returns them."""
    deadline = clock + args.seconds
    opened = args.sessions * args.open_every  # when the last session opens
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        sessions, lives = [], []
        for number, role in enumerate(roles(args.sessions, args.sessions - args.drawers)):
            context = await browser.new_context(viewport=VIEWPORT)
            await context.add_init_script(FRAMES_DRAWN + SHOWN_LOG)
            session = Session(number, role, context, clock, args.action_timeout)
            if role == "drawer":
                work = drawer(session, url, deadline)
            else:
                starters = args.sessions - args.drawers
                first = clock + opened + sum(s.role == "starter" for s in sessions) * args.start_every / starters
                work = starter(session, url, first, args.start_every, deadline, args.run_iterations)
            sessions.append(session)
            lives.append(session_life(session, clock + number * args.open_every, work, Path(args.folder)))
        try:  # each action is bounded by the action timeout; this bounds them all, should one hang regardless
            await asyncio.wait_for(asyncio.gather(*lives), args.seconds + 2 * args.action_timeout + 60)
        except asyncio.TimeoutError:
            for session in sessions:
                session.lost = session.lost or "cut at the load test's time bound"
        await browser.close()
    return sessions


def roles(sessions: int, starters: int) -> list:
    """'drawer' or 'starter' for each session, the starters spread evenly among the drawers."""
    return ["starter" if (i + 1) * starters // sessions > i * starters // sessions else "drawer"
            for i in range(sessions)]


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY seconds: the training processes of `runs_folder` (their command lines name it), the
    resident memory (RSS) of the server and of those trainers, the proportional memory (PSS: shared pages
    divided among their users) of this script's other processes, the browser's dozens and Playwright's driver,
    and the machine's available memory; and the CPU seconds each of these groups used (`cpu`: pid -> group,
    CPU seconds when first seen, or 0 for a process that began after the first sample, and when last seen)."""

    def __init__(self, server_pid: int, runs_folder: Path, clock: float):
        super().__init__(daemon=True)
        self.server_pid, self.runs_folder, self.clock = server_pid, runs_folder, clock
        self.samples, self.run_seen, self.cpu, self.halt = [], {}, {}, threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.halt.wait(max(0.0, due - time.monotonic())):  # every SAMPLE_EVERY s, or as often as it can
            self.samples.append(self.sample())
            due += SAMPLE_EVERY

    def sample(self) -> dict:
        now = round(time.monotonic() - self.clock, 2)
        processes = process_table()
        trainers = trainer_pids(self.runs_folder, processes)
        for pid in trainers:
            first, _ = self.run_seen.get(pid, (now, now))  # seconds since `clock`, rounded
            self.run_seen[pid] = (first, now)
        ours = descendants(os.getpid(), processes) - descendants(self.server_pid, processes)
        browser = ours - {os.getpid()}
        groups = {"server": {self.server_pid}, "trainers": trainers, "browser": browser, "this script": {os.getpid()}}
        for group, pids in groups.items():
            for pid, seconds in cpu_seconds(pids).items():
                _, first, _ = self.cpu.get(pid, (group, seconds if not self.samples else 0.0, None))
                self.cpu[pid] = (group, first, seconds)
        return {"t": now, "trainers": len(trainers), "server_mb": rss_mb([self.server_pid]),
                "trainers_mb": rss_mb(trainers), "browser_mb": pss_mb(browser),
                "available_mb": available_mb()}

    def stop(self) -> None:
        self.halt.set()
        self.join()


def process_table() -> dict:
    """pid -> (parent pid, command line as bytes) of every process this user may read."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (parent, Path(entry.path, "cmdline").read_bytes())
            except (OSError, IndexError, ValueError):  # ended meanwhile
                pass
    return table


def trainer_pids(runs_folder: Path, processes: dict | None = None) -> set:
    """The `python -m fewshot train` processes of runs under `runs_folder`, not their children: a child that a
    trainer forks shows the trainer's command line until it execs (importing torch runs ldconfig so, through
    ctypes' find_library, and one CI run counted that child as a third trainer beside two). Nor one that ended
    while the table was read, which a queued run may have replaced by the end of the reading: the trainers
    returned were all running at once, when the reading ended."""
    folder = str(runs_folder.resolve()).encode()
    if processes is None:
        processes = process_table()
    with_command = {pid for pid, (_, command) in processes.items()
                    if b"fewshot" in command and b"\0train\0" in command and folder in command}
    return {pid for pid in with_command if processes[pid][0] not in with_command and still_running(pid)}


def still_running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie's command line reads empty)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def cpu_seconds(pids) -> dict:
    """pid -> the CPU seconds (user and system) it has used, for those of `pids` still running."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, IndexError, ValueError):  # ended meanwhile
            pass
    return found


def descendants(pid: int, processes: dict) -> set:
    """`pid` and every process below it."""
    children = {}
    for child, (parent, _) in processes.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        found.add(todo[-1])
        todo += children.get(todo.pop(), [])
    return found


def rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):  # ended meanwhile
            pass
    return round(total / 2**20, 1)


def pss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE).group(1))
        except (OSError, AttributeError):  # ended meanwhile
            pass
    return round(total / 1024, 1)


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def server_pid(url: str) -> int:
    """The process of `streamlit run` serving on `url`'s port (browser.served_app does not say it)."""
    port = url.rstrip("/").rsplit(":", 1)[1].encode()
    for pid, (_, command) in process_table().items():
        if b"streamlit" in command and b"--server.port\0" + port + b"\0" in command:
            return pid
    raise RuntimeError(f"no streamlit process serving {url}")


def stop_runs(runs_folder: Path) -> int:
    """Stops every run under `runs_folder` that trains or waits in the queue (runs.stop), waits up to
    STOP_TIMEOUT s for their processes to end, kills those left; returns how many were left."""
    if runs_folder.is_dir():
        for run in runs.list_runs(runs_folder):
            if run.is_running() or run.is_queued():
                runs.stop(run)
    try:
        wait_for(lambda: not trainer_pids(runs_folder), "the runs to stop", timeout=STOP_TIMEOUT)
    except AssertionError:
        pass
    left = trainer_pids(runs_folder)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def figures(seconds: list) -> dict:
    """Count, median, 95th percentile (nearest rank) and maximum of `seconds`."""
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    rank = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"count": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


def trainers_during(action: Action, samples: list) -> int:
    """The most trainers sampled while the action went on (the last sample before it, if none during it)."""
    end = action.at + (action.seconds or 0)
    during = [s["trainers"] for s in samples if action.at <= s["t"] <= end]
    before = [s["trainers"] for s in samples if s["t"] < action.at]
    return max(during or before[-1:] or [0])


def summary(sessions: list, sampler: Sampler, limit: int, left: int, args, wall: float) -> dict:
    actions = [action for session in sessions for action in session.actions]
    samples = sampler.samples
    by_kind = {}
    watched = ("redraw",) if any(a.kind == "redraw" for a in actions) else ()  # the live charts' (--without-browser)
    for kind in ("open", "draw", "adapt", "clear", "classify", "start") + watched:
        done = [a for a in actions if a.kind == kind]
        answered = [a.seconds for a in done if a.seconds is not None]
        by_kind[kind] = {"started": len(done), "answered": len(answered), **figures(answered)}
    adapts = [a for a in actions if a.kind == "adapt" and a.seconds is not None]
    predictions = [a for a in actions if a.kind in ("adapt", "classify") and a.seconds is not None]
    starts = [a.outcome for a in actions if a.kind == "start" and a.seconds is not None]
    shown = [{"session": s.number, **item} for s in sessions for item in s.shown]
    errors = [item for item in shown if item["kind"] in ERROR_KINDS and not normal_answer(item["text"])]
    lost = [{"session": s.number, "role": s.role, "error": s.lost, "details": s.lost_details}
            for s in sessions if s.lost]
    most = max((s["trainers"] for s in samples), default=0)
    report = {
        "settings": {**vars(args), "starters": args.sessions - args.drawers, "limit": limit,
                     "cpus": len(set(args.server_cpus + args.browser_cpus) or os.sched_getaffinity(0))},
        "wall_seconds": round(wall, 1),
        "actions": by_kind,
        "adapt_at_the_limit": figures([a.seconds for a in adapts if trainers_during(a, samples) >= limit]),
        "adapt_server_ms": figures([a.server_ms for a in adapts if a.server_ms is not None]),
        "adapt_phases": adapt_phases(adapts),
        "predictions": {"right": sum(bool(a.right) for a in predictions), "of": len(predictions)},
        "starts": {outcome: sum(o.startswith(outcome) for o in starts)
                   for outcome in ("started", "queued", "refused", "error")},
        "errors": errors,
        "warnings": sorted({" ".join(item["text"].split()) for item in shown if item["kind"] == "warning"}),
        "server_exceptions": server_exceptions(Path(args.folder) / "streamlit.log"),
        "lost_sessions": lost,
        "runs_cut_short": {s.number: s.cut_short for s in sessions if s.cut_short},
        "form_troubles": [{"session": s.number, "trouble": trouble} for s in sessions for trouble in s.form_troubles],
        "trainers": {"max": most, "limit": limit, "runs": len(sampler.run_seen),
                     "run_seconds": figures([round(last - first, 1) for first, last in sampler.run_seen.values()])},
        "memory_mb": memory_figures(samples),
        "cpu_seconds": cpu_figures(sampler.cpu),
        "trainers_left_after_stop": left,
        "sample_period_s": round((samples[-1]["t"] - samples[0]["t"]) / max(1, len(samples) - 1), 2) if samples
        else None,
        "samples": samples,
        "every_action": [asdict(a) for a in actions],
    }
    report["problems"] = problems(report)
    return report


def cpu_figures(cpu: dict) -> dict:
    """The CPU seconds each group of processes used while sampled: on one machine, a class's browsers take
    cores that a real class's laptops would bring, and this says how many."""
    used = dict.fromkeys(("server", "trainers", "browser", "this script"), 0.0)
    for group, first, last in cpu.values():
        used[group] += last - first
    return {group: round(seconds, 1) for group, seconds in used.items()}


def memory_figures(samples: list) -> dict:
    if not samples:
        return dict.fromkeys(("server_max", "trainers_max", "browser_max", "available_min", "available_at_first"))
    return {"server_max": max(s["server_mb"] for s in samples), "trainers_max": max(s["trainers_mb"] for s in samples),
            "browser_max": max(s["browser_mb"] for s in samples),
            "available_min": min(s["available_mb"] for s in samples), "available_at_first": samples[0]["available_mb"]}


def adapt_phases(adapts: list) -> dict:
    """Where an Adapt's time goes: until the page sent its request (the browser), until the end of the script
    run came back (the server, and the network), until the page had drawn it (the browser)."""
    timed = [a for a in adapts if a.sent_seconds is not None and a.run_seconds is not None]
    return {"request_sent": figures([a.sent_seconds for a in timed]),
            "script_run": figures([round(a.run_seconds - a.sent_seconds, 3) for a in timed]),
            "drawn": figures([round(a.seconds - a.run_seconds, 3) for a in timed])}


def server_exceptions(log: Path) -> dict:
    """The last line of each traceback in the server's log (what the page shows of it is redacted): how many
    times each came, the first whole traceback that ended with it, so that a rare one can be read, and whether
    that one passed through the app's own code ("ours") or Streamlit's alone."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    found, start = {}, 0
    for i, (before, line) in enumerate(zip([""] + lines, lines)):
        if line.startswith("Traceback"):
            start = i
        elif before.startswith(" ") and re.match(r"[A-Za-z_.]+(Error|Exception)\b", line):
            traceback = lines[start:i + 1]
            seen = found.setdefault(line, {"count": 0, "traceback": "\n".join(traceback),
                                           "ours": any(map(_in_the_app, traceback))})
            seen["count"] += 1
    return found


def _in_the_app(line: str) -> bool:
    """Whether a traceback's line names a file of this app (not of a package installed, in the repo or not)."""
    frame = re.match(r'\s*File "([^"]+)"', line)
    return bool(frame) and frame[1].startswith(str(REPO)) and "site-packages" not in frame[1]


def normal_answer(text: str) -> bool:
    """Whether a message is the app's answer to Start on a full server, no error."""
    return REFUSED in text or QUEUED.search(text) is not None


def problems(report: dict) -> list:
    """What went wrong, one line each: the load test fails on any."""
    found = [f"{kind}: {figures_['started'] - figures_['answered']} of {figures_['started']} not answered"
             for kind, figures_ in report["actions"].items() if figures_["answered"] < figures_["started"]]
    found += [f"session {s['session']} ({s['role']}) lost: {s['error']}" for s in report["lost_sessions"]]
    found += [f"session {e['session']} showed {e['kind']}: {first_line(e['text'])}" for e in report["errors"]]
    found += [f"Start answered with {report['starts']['error']} errors"] if report["starts"]["error"] else []
    wrong = report["predictions"]["of"] - report["predictions"]["right"]
    found += [f"{wrong} of {report['predictions']['of']} predictions wrong, or none shown (alone, each drawing is "
              "recognised: test_browser_draw)"] if wrong else []
    if report["trainers"]["max"] > report["trainers"]["limit"]:
        found.append(f"{report['trainers']['max']} trainers at once, over the limit {report['trainers']['limit']}")
    if report["trainers_left_after_stop"]:
        found.append(f"{report['trainers_left_after_stop']} trainers still running {STOP_TIMEOUT} s after the stop")
    return found


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def print_table(report: dict) -> None:
    settings, memory, trainers = report["settings"], report["memory_mb"], report["trainers"]
    print(f"\n{settings['sessions']} sessions ({settings['drawers']} drawing, {settings['starters']} starting runs), "
          f"{settings['seconds']} s, browser nice {settings['nice']}, {settings['cpus']} CPUs{cpu_sets(settings)}; "
          f"wall {report['wall_seconds']} s")
    print(f"{'action':<30}{'started':>8}{'answered':>9}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    rows = list(report["actions"].items())
    rows.append(("adapt, trainers at the limit", {**report["adapt_at_the_limit"], "started": "",
                                                  "answered": report["adapt_at_the_limit"]["count"]}))
    for kind, f in rows:
        times = "".join(f"{f[q]:>8.2f}" if f[q] is not None else f"{'-':>8}" for q in ("p50", "p95", "max"))
        print(f"{kind:<30}{f['started']:>8}{f['answered']:>9}{times}")
    phases, server = report["adapt_phases"], report["adapt_server_ms"]
    times = [phases[phase][q] for phase in phases for q in ("p50", "p95")] + [server["p50"], server["p95"]]
    print("adapt, p50 / p95 s: request sent {} / {}, script run {} / {}, drawn {} / {}; the adaptation in the run "
          "(the page's 'Adapted in'): {} / {} ms".format(*times))
    print(f"predictions right: {report['predictions']['right']} of {report['predictions']['of']}; Start answered: "
          + ", ".join(f"{count} {outcome}" for outcome, count in report["starts"].items()))
    print(f"trainers at once: max {trainers['max']} (limit {trainers['limit']}; sampled every "
          f"{report['sample_period_s']} s); {trainers['runs']} runs, lasting p50 {trainers['run_seconds']['p50']} s; "
          f"left after the stop: {report['trainers_left_after_stop']}")
    print(f"memory (MB): server RSS max {memory['server_max']}, trainers' RSS max {memory['trainers_max']}, browser "
          f"PSS max {memory['browser_max']}; available min {memory['available_min']} "
          f"(at first {memory['available_at_first']})")
    span = report["samples"][-1]["t"] - report["samples"][0]["t"] if report["samples"] else 0.0
    print(f"CPU seconds in the {span:.0f} s sampled ({settings['cpus']} CPUs: {settings['cpus'] * span:.0f} in all): "
          + ", ".join(f"{group} {seconds}" for group, seconds in report["cpu_seconds"].items()))
    for trouble in report["form_troubles"]:
        print(f"session {trouble['session']} filled the Train page's form again: {trouble['trouble'][:150]}")
    for text in report["warnings"]:
        print(f"warning shown: {first_line(text)}")
    for end, seen in report["server_exceptions"].items():
        where = "the app's code" if seen["ours"] else "Streamlit's code alone"
        print(f"in the server's log, {seen['count']} times, in {where}: {end}; the first:\n{seen['traceback']}")
    print("\n".join(["problems:"] + [f"  {p}" for p in report["problems"]]) if report["problems"] else "no problem")


def cpu_sets(settings: dict) -> str:
    """Which CPUs the server and the browser were given, if they were."""
    return "".join(f", the {who} on CPUs {','.join(map(str, settings[f'{who}_cpus']))}"
                   for who in ("server", "browser") if settings[f"{who}_cpus"])


def cpu_list(text: str) -> list:
    """The CPUs that "0,1" or "2-15" (or "0,4-7") names, as os.sched_setaffinity takes them."""
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return sorted(cpus)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30, help="browser sessions in all")
    parser.add_argument("--drawers", type=int, default=20, help="of them on the Draw page; the others start runs")
    parser.add_argument("--seconds", type=float, default=300, help="how long the sessions act, opening included")
    parser.add_argument("--data-root", default=default_data_root(), help="Omniglot, for the runs")
    parser.add_argument("--json", help="write the report, every sample and every action to this file")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the browser and of this script's "
                                                            "sessions (19: the lowest priority)")
    parser.add_argument("--start-every", type=float, default=60, help="seconds between a starter's presses")
    parser.add_argument("--run-iterations", type=int, default=2000, help="meta-updates of each tiny run")
    parser.add_argument("--open-every", type=float, default=1.0, help="seconds between two sessions' arrival")
    parser.add_argument("--action-timeout", type=float, default=60, help="seconds an action may wait for its answer")
    parser.add_argument("--folder", help="for the runs, the checkpoint and the server's log (default: a new one)")
    parser.add_argument("--server-cpus", type=cpu_list, default=[], help="CPUs of the server and its trainers "
                                                                         "(0,1 or 0-1; default: all)")
    parser.add_argument("--browser-cpus", type=cpu_list, default=[], help="CPUs of the browser and of this script's "
                                                                          "sessions (default: all)")
    parser.add_argument("--without-browser", action="store_true", help="sessions that send the page's messages "
                        "themselves, on the websocket: the server's side alone (scripts/class_without_browser.py)")
    parser.add_argument("--pause", type=float, default=2.0, help="--without-browser: seconds a drawer waits before "
                                                                 "each action (a student drawing)")
    args = parser.parse_args(argv)
    if not 0 <= args.drawers <= args.sessions:
        parser.error("--drawers must be between 0 and --sessions")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if not CHROMIUM and not args.without_browser:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    args.folder = str(Path(args.folder or tempfile.mkdtemp(prefix="fewshot-load-")).resolve())
    folder = Path(args.folder)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "checkpoints" / DEFAULT_CHECKPOINT, folder / "checkpoints" / DEFAULT_CHECKPOINT)
    runs_folder = folder / "runs"
    environment = {"FEWSHOT_RUNS": str(runs_folder), "FEWSHOT_CHECKPOINTS": str(folder / "checkpoints"),
                   "FEWSHOT_DATA": args.data_root,
                   # No reload of the app's modules when a file of the repository changes meanwhile (an edit
                   # during the test): reloaded under running sessions, imports fail (KeyError: 'fewshot').
                   "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    for variable in ("FEWSHOT_INSTRUCTOR_KEY", "FEWSHOT_RAY_ADDRESS"):  # any tab starts runs, which train here
        if os.environ.pop(variable, None) is not None:
            print(f"{variable} left unset for the load test's server")
    if args.server_cpus:  # inherited by the server, and by the trainers it starts
        os.sched_setaffinity(0, args.server_cpus)
    limit = limits.max_runs()  # as the server, which gets this environment, these CPUs and FEWSHOT_MAX_RUNS if set
    print(f"load test in {folder} (the server's log: streamlit.log)", flush=True)
    began = time.monotonic()
    try:
        with served_app(folder, **environment) as url:
            if args.browser_cpus:  # inherited by the sampler, Playwright's driver and the browser it starts
                os.sched_setaffinity(0, args.browser_cpus)
            clock = time.monotonic()  # the sessions' and the samples' time 0
            sampler = Sampler(server_pid(url), runs_folder, clock)
            sampler.start()  # before the renice: its thread keeps the normal priority
            try:
                if args.nice:  # inherited by Playwright's driver and the browser it starts; the server runs already
                    os.setpriority(os.PRIO_PROCESS, 0, args.nice)
                if args.without_browser:
                    import class_without_browser  # it imports this module's figures and roles
                    sessions = class_without_browser.class_at_work(url, args, clock)
                else:
                    sessions = asyncio.run(class_at_work(url, args, clock))
            finally:
                sampler.stop()
    finally:  # the server has stopped: no Start can come in any more
        left = stop_runs(runs_folder)
    report = summary(sessions, sampler, limit, left, args, time.monotonic() - began)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["problems"] else 0)
