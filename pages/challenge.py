"""Challenge: a student against the model on the same one-shot tasks, and the room's score on a scoreboard.

The page shows task `challenge_task` of the seed chosen, one query at a time; each click on a class answers the
query shown. After the last query the model adapts to the task (fewshot/challenge.py), the page shows both
answers and the truth, and stores them on the class scoreboard (fewshot/scoreboard.py), if it can be opened.
The player is the desk in the page's URL (?desk=, fewshot/desks.py), as on the Draw page: a reload of the page, or
a restart of the server, starts a new session, which reads the tasks that the desk's sessions played back from the
scoreboard.
"""

import secrets
from pathlib import Path

import numpy as np
import streamlit as st

import app_ui as ui
from fewshot import challenge, runs, scoreboard
from fewshot.adaptation import idle_threads, load_adaptable, ways_of
from fewshot.checkpoints import CheckpointError
from fewshot.config import Config
from fewshot.omniglot import DatasetNotFound
from fewshot.plots import ink_picture

LETTERS = "ABCDEFGHIJKLMNOPQRST"  # the classes' labels, for up to 20 ways
PER_ROW = 10  # support drawings per row: a 20-way task takes two rows
SCALE = {5: 4, 20: 2}  # screen pixels per Omniglot pixel of a support drawing, by ways
QUERY_SCALE = 5
DEFAULT_SEED, MAX_SEED = 1, 999_999
MAX_TASKS = scoreboard.MAX_SESSION_ANSWERS // challenge.QUERIES  # results a session keeps
ROOM_REFRESH_S = 5  # the room's standings are read again at most this often, however many students click

state = st.session_state
desk = ui.tab_desk()
if "challenge_session" not in state:  # anonymous: this browser session of the tab's desk, nothing else
    # A session of its own under the desk: students who open one shared link (a teacher's, copied with its desk)
    # record their answers apart, where one id would keep the first student's answer to each query only.
    state.challenge_session = f"{desk}.{secrets.token_hex(4)}"
state.setdefault("challenge_given", [])  # the student's answers to the task shown, so far


@st.cache_resource(show_spinner=False)
def unseen_characters(data_root: str):
    return challenge.unseen_characters(ui.omniglot(data_root))


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def shipped_model(path: str, modified: float):
    return load_adaptable(Path(path))


@st.cache_data(ttl=ROOM_REFRESH_S, show_spinner=False)
def room_standings(path: str) -> list:
    return scoreboard.Scoreboard(Path(path)).standings()


def enlarged(ink, scale: int) -> np.ndarray:
    """Ink as black on white, each pixel a square of scale x scale (sharp, not blurred), in a grey frame."""
    return np.pad(ink_picture(ink.numpy(), scale), 1, constant_values=0.7)


def open_scoreboard():
    """The class scoreboard, or None after saying in a line why there is none."""
    try:
        return scoreboard.Scoreboard(scoreboard.db_path())
    except scoreboard.ScoreboardError as error:
        st.warning(f"No class scoreboard ({error}): the game goes on, but answers are not stored.",
                   icon=":material/database_off:")
        return None


def played_before(board) -> dict:
    """(level, seed, number) -> the student's answers, the model's, its confidences and the truth, of the tasks
    played under this tab's desk in sessions before this one. Their confidences were not stored: None, never
    shown, for settings() goes on to the task after them."""
    if board is None:
        return {}
    try:
        return {key: (student, model, None, truth)
                for key, (student, model, truth) in board.played(state.desk).items()}
    except scoreboard.ScoreboardError as error:
        st.warning(f"Your earlier answers cannot be read from the class scoreboard ({error}): you start afresh.",
                   icon=":material/database_off:")
        return {}


def answer(task, query: int, given: int, model, metadata, board) -> None:
    """A click on class `given` for query `query` of `task`; after the last query, the model's turn. A click
    on a page drawn before the last answer counted (a double click) is ignored."""
    key = (task.level, task.seed, task.number)
    if key in state.challenge_played or len(state.challenge_given) != query:
        return
    state.challenge_given = state.challenge_given + [given]
    if len(state.challenge_given) < challenge.QUERIES:
        return
    with idle_threads():
        model_said, confidence = challenge.model_answers(model, metadata, task)
    state.challenge_played[key] = (state.challenge_given, model_said, confidence, task.truth)
    state.challenge_given = []
    if board is not None:
        record(board, task, *state.challenge_played[key])


def record(board, task, student: list, model: list, confidence: list, truth: list) -> None:
    answers = [scoreboard.Answer(task.level, task.seed, task.number, q + 1, s, m, t)
               for q, (s, m, t) in enumerate(zip(student, model, truth))]
    try:
        board.record(answers, state.challenge_session, state.get("challenge_nickname"))
        room_standings.clear()
    except scoreboard.ScoreboardError as error:
        state.challenge_unsaved = f"This task's answers were not stored on the class scoreboard: {error}."


def next_task() -> None:
    state.challenge_task += 1
    state.challenge_given = []


def settings() -> tuple:
    """The level and seed chosen in the sidebar, where the nickname is asked too."""
    with st.sidebar:
        ways = st.radio("Level", challenge.WAYS, format_func=lambda w: f"{w}-way", horizontal=True,
                        key="challenge_ways", persist_state="session")
        one_alphabet = st.toggle("One alphabet", key="challenge_one_alphabet", persist_state="session",
                                 help="All the classes from one alphabet: they look alike. Much harder.")
        seed = st.number_input("Seed", 0, MAX_SEED, DEFAULT_SEED, key="challenge_seed", persist_state="session",
                               help="Task k of a seed is always the same task: one seed, the same tasks for the "
                                    "whole class.")
        st.text_input("Nickname (optional)", key="challenge_nickname", max_chars=scoreboard.MAX_NICKNAME,
                      persist_state="session", help="Stored with your answers on the class scoreboard.")
    game = challenge.Level(int(ways), bool(one_alphabet)), int(seed)
    if state.get("challenge_game") != game:  # on to the first task after those played
        played = [number for (level, seed, number) in state.challenge_played if (level, seed) == game]
        state.challenge_game, state.challenge_task, state.challenge_given = game, 1 + max(played, default=0), []
    return game


def support_grid(task, answering: bool, model, metadata, board) -> None:
    """The classes' drawings, each with its letter: while answering, a button that answers the query shown."""
    ways, query = len(task.support), len(state.challenge_given)
    for first in range(0, ways, PER_ROW):
        for c, column in zip(range(first, ways), st.columns(min(ways, PER_ROW), gap="xsmall")):
            with column:
                st.image(enlarged(task.support[c], SCALE[ways]), width="stretch",
                         caption=None if answering else LETTERS[c])
                if answering:
                    st.button(LETTERS[c], key=f"challenge_class_{c}", width="stretch", on_click=answer,
                              args=(task, query, c, model, metadata, board))


def show_query(task) -> None:
    query = len(state.challenge_given)
    st.markdown(f"**Query {query + 1} of {challenge.QUERIES}**: which class is it? Click its letter below.")
    st.image(enlarged(task.queries[query], QUERY_SCALE))


def show_results(task, student: list, model: list, confidence: list, truth: list) -> None:
    """Each query with the student's answer, the model's and the truth; the scores so far at this level."""
    for q, column in enumerate(st.columns(challenge.QUERIES)):
        with column:
            st.image(enlarged(task.queries[q], 3))
            st.markdown(f"You **{LETTERS[student[q]]}** {_mark(student[q], truth[q])}  \n"
                        f"Model **{LETTERS[model[q]]}** {_mark(model[q], truth[q])}  \n"
                        f"Truth **{LETTERS[truth[q]]}**")
            st.caption(f"{confidence[q]:.0%} sure")
    score = challenge.Score()
    for (level, _, _), (said, model_said, _, right) in state.challenge_played.items():
        if level == task.level:
            score.add(said, model_said, right)
    st.markdown(f"**So far at {task.level.label}: you {score.student} of {score.queries} "
                f"({score.student / score.queries:.0%}), the model {score.model} of {score.queries} "
                f"({score.model / score.queries:.0%})**, on the same queries.")


def _mark(said: int, truth: int) -> str:
    return ":green[✓]" if said == truth else ":red[✗]"


def show_room(board) -> None:
    """The whole room's accuracy against the model's, per level, for the teacher to show."""
    st.subheader("The room against the model")
    if board is None:
        return
    try:
        standings = room_standings(str(board.path))
    except scoreboard.ScoreboardError as error:
        st.warning(f"Cannot read the class scoreboard: {error}", icon=":material/database_off:")
        return
    if not standings:
        st.caption("No answers stored yet: play a task.")
        return
    st.table([{"Level": s.level.label, "Players": s.players, "Answers": s.answers,
               "Students": f"{s.student_right / s.answers:.1%}", "Model": f"{s.model_right / s.answers:.1%}"}
              for s in standings], hide_index=True)
    st.button("Refresh", icon=":material/refresh:", help=f"Read again at most every {ROOM_REFRESH_S} s.")


st.title("You against the model")
ui.settings_checked()  # a fresh server serves this page alone, without app.py; loading the model reads the limits
st.caption("One drawing each of characters you have never seen, then new drawings: which is which? The MAML "
           "model gets the same tasks and a few gradient steps on the same drawings. Settings in the sidebar.")
if not ui.dataset_warning():
    st.stop()
try:
    data = unseen_characters(Config().data_root)
except (DatasetNotFound, OSError) as error:
    st.error(f"Cannot read Omniglot: {error}", icon=":material/error:")
    st.stop()

board = open_scoreboard()
if "challenge_played" not in state:  # a session's start
    state.challenge_played = played_before(board)
level, seed = settings()
path = challenge.model_path(runs.checkpoints_dir(), level.ways)
try:
    model, metadata = shipped_model(str(path), path.stat().st_mtime)
except OSError:
    st.error(f"No model for {level.ways}-way tasks: {path} cannot be read (it ships in checkpoints/).",
             icon=":material/error:")
    st.stop()
except CheckpointError as error:
    st.error(f"Cannot use the {level.ways}-way model: {error}", icon=":material/error:")
    st.stop()
if ways_of(model) != level.ways:  # another model copied over the file: it could not answer these tasks
    st.error(f"Cannot use the {level.ways}-way model: {path.name} tells {ways_of(model)} classes apart, not "
             f"{level.ways}.", icon=":material/error:")
    st.stop()
if "challenge_unsaved" in state:
    st.warning(state.pop("challenge_unsaved"), icon=":material/database_off:")

task = challenge.draw_task(data, level, seed, state.challenge_task)
played = state.challenge_played.get((level, seed, task.number))
title, button = st.columns([3, 1], vertical_alignment="center")
title.markdown(f"#### Seed {seed} · task {task.number} · {level.label}")
if played is not None:
    show_results(task, *played)
    button.button("Next task", type="primary", icon=":material/arrow_forward:", on_click=next_task,
                  width="stretch")
elif len(state.challenge_played) >= MAX_TASKS:
    st.info(f"This session has played {MAX_TASKS} tasks, the most one session keeps. Open the app's address "
            "without its ?desk=... to start afresh.")
    st.stop()
else:
    show_query(task)
support_grid(task, played is None, model, metadata, board)
show_room(board)
