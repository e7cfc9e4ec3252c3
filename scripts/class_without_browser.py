"""The class of scripts/load_test.py without a browser (its --without-browser): each session is a thread holding a
websocket to the server (tests/forged.py) and sending what the page would send, so that the server's cores serve
the server alone, as in a class, where each browser runs on its student's machine. On 2 cores, 30 Chromium pages
take most of the machine by themselves (load_test.py's CPU figures), and this is the measurement of the server that
such a machine can give.

A drawer sends, as the canvases do after each stroke, the five class drawings and a query (the strokes and the
drawing as a PNG data URL), then, until the time is up: Adapt, Clear the query, another query. It waits about --pause
seconds before each action, a student's time to draw or to look; the query's canvas, Clear the query and Adapt
rerun the page's fragment alone, as in the browser. A starter on the Train page sets the form's sizes and presses
Start, as load_test.py's starters do, and in between asks for the live charts' redraws at the interval the server
gave (st.fragment(run_every=...): the browser's timer sends them). An action's time runs from the message sent to
the server's message that the script run has finished: the server's part of what a student waits for (load_test.py's
"script run" phase), without the browser's drawing.
"""

import itertools
import json
import random
import re
import threading
import time

from canvas_drawings import QUERY, QUERY_NAME, SECOND_QUERY, SECOND_QUERY_NAME, SHAPES, canvas_image, data_url
from forged import ForgedSession, trigger
from load_test import (ADAPTED_IN, PREDICTION, RUN_SIZES, STARTED, TINY_FORM, Action, first_line, normal_answer,
                       roles, start_outcome)
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.WidgetStates_pb2 import WidgetState

ALERT_KINDS = {Alert.ERROR: "error", Alert.WARNING: "warning", Alert.INFO: "info", Alert.SUCCESS: "success"}
JITTER = 2.0  # pixels, of the 150 of a canvas


class Session:
    """One websocket session on one page of the app, and what it did (the fields that load_test.summary reads)."""

    def __init__(self, number: int, role: str, clock: float, timeout_s: float):
        self.number, self.role, self.clock, self.timeout_s = number, role, clock, timeout_s
        self.forged = None
        self.actions, self.shown, self.lost, self.lost_details = [], [], None, ""
        self.form_troubles, self.cut_short = [], 0

    def timed(self, kind: str, act) -> Action:
        """Does `act()` and records the seconds it took as an Action of `kind`; keeps what the run showed."""
        action = Action(self.number, kind, round(time.monotonic() - self.clock, 3))
        self.actions.append(action)
        tick = time.monotonic()
        act()
        action.seconds = round(time.monotonic() - tick, 3)
        self.note_shown()
        return action

    def rerun(self, kind: str, *widgets: WidgetState, auto_fragment: str = "") -> Action:
        """Sends `widgets` (the rerun of the fragment that drew the first, if any; or the auto-rerun of
        `auto_fragment`) and records the seconds until the script run has finished, as an Action of `kind`."""
        fragment = auto_fragment or (self.forged.fragment_of.get(widgets[0].id, "") if widgets else "")
        action = self.timed(kind, lambda: self.forged.run(*widgets, fragment=fragment, auto=bool(auto_fragment)))
        action.sent_seconds, action.run_seconds = 0.0, action.seconds  # no browser before or after the run
        return action

    def open(self, url: str, page: str) -> None:
        def connect_and_open() -> None:
            self.forged = ForgedSession(url, timeout=self.timeout_s)
            self.forged.open(page)
        self.timed("open", connect_and_open)

    def note_shown(self) -> None:
        """Keeps the alerts, exceptions and toasts the last run drew (load_test.py's window.shown)."""
        for alert in self.forged.elements_of("alert"):
            self.shown.append({"kind": ALERT_KINDS.get(alert.format, "alert"), "text": alert.body})
        self.shown += [{"kind": "exception", "text": text} for text in self.forged.texts("exception")]
        self.shown += [{"kind": "toast", "text": text} for text in self.forged.texts("toast")]

    def canvas(self, slot: str) -> str:
        """The id of the canvas of `slot` ("<class>_<drawing>" or "query") in its current version."""
        shown = [widget_id for widget_id in self.forged.fragment_of
                 if re.search(rf"-draw_canvas_{slot}_\d+$", widget_id)]
        return shown[-1]  # the newest: a cleared canvas comes back under a new key


def drawing(widget_id: str, strokes: list, hand: random.Random) -> WidgetState:
    """What the canvas `widget_id` sends once `strokes` are drawn on it by `hand`, which moves each point up to
    JITTER pixels: its strokes (none here: the page keeps them only to redraw the canvas) and the drawing as a PNG
    data URL. (Each student's drawings differ: the same ones, from every session, would be adapted to once for
    all, in the page's cache.)"""
    moved = [[(x + hand.uniform(-JITTER, JITTER), y + hand.uniform(-JITTER, JITTER)) for x, y in stroke]
             for stroke in strokes]
    value = {"drawing": {"raw": {"objects": []}, "data": data_url(canvas_image(moved))}}
    return WidgetState(id=widget_id, json_value=json.dumps(value))


def predicted(session: Session, action: Action, expected_shape: str) -> None:
    """Notes the class the run's markdown predicts, whether it is right, and the page's "Adapted in"."""
    texts = [text.replace("**", "") for text in session.forged.texts("markdown")]
    prediction = next(filter(None, map(PREDICTION.search, texts)), None)
    adapted = next(filter(None, map(ADAPTED_IN.search, texts)), None)
    action.outcome = prediction.group(1) if prediction else "no prediction shown"
    action.right = action.outcome == f"Class {list(SHAPES).index(expected_shape) + 1}"  # the default names
    action.server_ms = int(adapted.group(1)) if adapted else None


def drawer(session: Session, url: str, deadline: float, pause: float) -> None:
    """Before each action it waits `pause` seconds on average, from half to one and a half times that: students
    who all waited the same would all send their next action at once, every time."""
    session.open(url, "draw")
    hand = random.Random(session.number)

    def think() -> None:
        time.sleep(hand.uniform(0.5, 1.5) * pause)
    for number, strokes in enumerate(SHAPES.values()):
        think()
        session.rerun("draw", drawing(session.canvas(f"{number}_0"), strokes, hand))
    think()
    session.rerun("draw", drawing(session.canvas("query"), QUERY, hand))
    queries, expected = itertools.cycle([(SECOND_QUERY, SECOND_QUERY_NAME), (QUERY, QUERY_NAME)]), QUERY_NAME
    while True:
        think()
        predicted(session, session.rerun("adapt", trigger(session.forged.widget("Adapt"))), expected)
        if time.monotonic() > deadline:
            break
        think()
        session.rerun("clear", trigger(session.forged.widget("Clear the query")))
        strokes, expected = next(queries)
        think()
        predicted(session, session.rerun("classify", drawing(session.canvas("query"), strokes, hand)), expected)


def starter(session: Session, url: str, first_press: float, every: float, deadline: float, iterations: int) -> None:
    """Presses Start at `first_press`, then every `every` seconds until `deadline` (once at least), watching the
    live charts in between."""
    session.open(url, "train")
    sizes = {label: TINY_FORM[label] for label in RUN_SIZES}
    fields = {session.forged.widget(label): int(value)
              for label, value in {**sizes, "meta-updates": iterations}.items()}
    start = session.forged.widget("Start")
    for press in itertools.count():
        moment = first_press + press * every
        if press and moment >= deadline:
            break
        watch_until(session, moment)
        action = session.rerun("start", *[WidgetState(id=field, int_value=value) for field, value in fields.items()],
                               trigger(start))
        answers = [alert.body for alert in session.forged.elements_of("alert")
                   if STARTED in alert.body or normal_answer(alert.body)]
        action.outcome = start_outcome(answers[0]) if answers else "error: no answer shown"
    watch_until(session, deadline)


def watch_until(session: Session, moment: float) -> None:
    """Until `moment`, sends the live charts' reruns as the browser's timers do, each at its interval."""
    due = {}  # a fragment's id -> when its next rerun is due
    while True:
        now = time.monotonic()
        due = {fragment: due.get(fragment, now + interval) for fragment, interval in session.forged.auto_reruns.items()}
        fragment, when = min(due.items(), key=lambda item: item[1], default=(None, moment))
        if when >= moment:
            time.sleep(max(0.0, moment - time.monotonic()))
            return
        time.sleep(max(0.0, when - time.monotonic()))
        session.rerun("redraw", auto_fragment=fragment)
        due[fragment] = time.monotonic() + session.forged.auto_reruns.get(fragment, 0)


def session_life(session: Session, begin: float, work) -> None:
    """Waits for `begin`, then does `work()`; a failed or unanswered action ends the session, which is lost."""
    time.sleep(max(0.0, begin - time.monotonic()))
    try:
        work()
    except Exception as error:  # a run not finished within the timeout, a closed websocket, a widget not shown
        session.lost = f"{session.actions[-1].kind if session.actions else 'open'}: {first_line(error)}"
        session.lost_details = repr(error)[:2000]
    finally:
        if session.forged:
            session.forged.close()


def class_at_work(url: str, args, clock: float) -> list:
    """load_test.class_at_work's sessions, as threads of websocket sessions; returns them."""
    deadline = clock + args.seconds
    opened = args.sessions * args.open_every
    starters = args.sessions - args.drawers
    sessions, threads = [], []
    for number, role in enumerate(roles(args.sessions, starters)):
        session = Session(number, role, clock, args.action_timeout)
        if role == "drawer":
            work = lambda session=session: drawer(session, url, deadline, args.pause)  # noqa: E731
        else:
            first = clock + opened + sum(s.role == "starter" for s in sessions) * args.start_every / starters
            work = lambda session=session, first=first: starter(  # noqa: E731
                session, url, first, args.start_every, deadline, args.run_iterations)
        sessions.append(session)
        threads.append(threading.Thread(target=session_life, args=(session, clock + number * args.open_every, work),
                                        daemon=True))
    for thread in threads:
        thread.start()
    bound = time.monotonic() + args.seconds + 2 * args.action_timeout + 60
    for session, thread in zip(sessions, threads):
        thread.join(max(0.0, bound - time.monotonic()))
        if thread.is_alive():
            session.lost = session.lost or "cut at the load test's time bound"
    return sessions
