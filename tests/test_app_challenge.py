"""The Challenge page with Streamlit's AppTest: a task played through the page's buttons, its score, the rows the
class scoreboard stores, the settings, a game that survives a reload, and a page without Omniglot or without a
usable scoreboard."""

import shutil
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apptests import APP, open_page
from fewshot import challenge, desks, limits, scoreboard
from fewshot.checkpoints import checkpoint_metadata, load_checkpoint, save_checkpoint
from fewshot.config import Config
from fewshot.models import build_model

REPO = Path(__file__).resolve().parents[1]
LETTERS = "ABCDEFGHIJKLMNOPQRST"


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch, data_root):
    """The two shipped models in a temporary checkpoints folder, the scoreboard in a temporary file."""
    monkeypatch.setenv("FEWSHOT_DATA", data_root)
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("FEWSHOT_DB", str(tmp_path / "board.sqlite3"))
    (tmp_path / "checkpoints").mkdir()
    for name in challenge.MODEL_FILES.values():
        shutil.copyfile(REPO / "checkpoints" / name, tmp_path / "checkpoints" / name)
    return tmp_path


@pytest.fixture(scope="module")
def unseen(omniglot):
    return challenge.unseen_characters(omniglot)


def open_challenge_page() -> AppTest:
    return open_page("pages/challenge.py", timeout=120)


def texts(app: AppTest, kind: str) -> str:
    return "\n".join(element.value for element in app.get(kind))


def expected(unseen, level, seed: int, number: int):
    """The task and the model's answers, computed apart from the page."""
    task = challenge.draw_task(unseen, level, seed, number)
    model, metadata = load_checkpoint(challenge.model_path(REPO / "checkpoints", level.ways))
    return task, challenge.model_answers(model, metadata, task)[0]


def play(app: AppTest, answers: list) -> None:
    """Clicks the class of each answer, one query after the other, as a student does."""
    for q, answer in enumerate(answers):
        assert f"**Query {q + 1} of {challenge.QUERIES}**" in texts(app, "markdown")
        app.button(key=f"challenge_class_{answer}").click().run()
        assert not app.exception, app.exception


def test_a_played_task_is_scored_against_the_model_and_stored(unseen, folders):
    level = challenge.Level(5, False)
    task, model = expected(unseen, level, seed=1, number=1)
    right = sum(m == t for m, t in zip(model, task.truth))
    student = [t if q % 2 == 0 else (t + 1) % 5 for q, t in enumerate(task.truth)]  # queries 1, 3, 5 right
    app = open_challenge_page()
    assert "#### Seed 1 · task 1 · 5-way" in texts(app, "markdown")
    app.text_input(key="challenge_nickname").set_value("  Ada <3 ").run()
    play(app, student)

    text = texts(app, "markdown")
    for q in range(challenge.QUERIES):
        assert (f"You **{LETTERS[student[q]]}** {':green[✓]' if q % 2 == 0 else ':red[✗]'}  \n"
                f"Model **{LETTERS[model[q]]}** {':green[✓]' if model[q] == task.truth[q] else ':red[✗]'}  \n"
                f"Truth **{LETTERS[task.truth[q]]}**") in text
    assert f"So far at 5-way: you 3 of 5 (60%), the model {right} of 5 ({right / 5:.0%})" in text
    stored = sqlite3.connect(folders / "board.sqlite3").execute(
        "SELECT ways, one_alphabet, seed, task, query, student, model, truth, nickname FROM answers ORDER BY query")
    assert stored.fetchall() == [(5, 0, 1, 1, q + 1, student[q], model[q], task.truth[q], "Ada 3") for q in range(5)]
    room = app.table[0].value
    assert room.to_dict("records") == [{"Level": "5-way", "Players": 1, "Answers": 5, "Students": "60.0%",
                                        "Model": f"{right / 5:.1%}"}]

    app.button(key=next(b.key for b in app.button if b.label == "Next task")).click().run()
    assert "#### Seed 1 · task 2 · 5-way" in texts(app, "markdown")
    task2, model2 = expected(unseen, level, seed=1, number=2)
    play(app, task2.truth)  # all right this time
    right2 = right + sum(m == t for m, t in zip(model2, task2.truth))
    assert f"So far at 5-way: you 8 of 10 (80%), the model {right2} of 10 ({right2 / 10:.0%})" in texts(app, "markdown")


def reopened_challenge_page(desk: str) -> AppTest:
    """The Challenge page in a new session whose URL names `desk`: the page reloaded, or the browser reconnected to
    a restarted server."""
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params["desk"] = desk
    app.run().switch_page("pages/challenge.py").run()
    assert not app.exception, app.exception
    return app


def test_the_game_survives_a_reload_or_a_restarted_server(unseen, folders):
    level = challenge.Level(5, False)
    app = open_challenge_page()
    desk = app.query_params["desk"]
    assert desks.is_desk(desk)  # put in the URL at once
    task, model = expected(unseen, level, seed=1, number=1)
    play(app, task.truth)  # 5 of 5

    again = reopened_challenge_page(desk)
    assert again.query_params["desk"] == desk and not again.warning
    assert "#### Seed 1 · task 2 · 5-way" in texts(again, "markdown")  # on to the next task
    task2, model2 = expected(unseen, level, seed=1, number=2)
    play(again, [(t + 1) % 5 for t in task2.truth])  # 0 of 5
    right = sum(m == t for m, t in zip(model + model2, task.truth + task2.truth))
    assert (f"So far at 5-way: you 5 of 10 (50%), the model {right} of 10 ({right / 10:.0%})"
            in texts(again, "markdown"))  # the running score of both sessions
    stored = sqlite3.connect(folders / "board.sqlite3").execute("SELECT DISTINCT session, task FROM answers "
                                                                "ORDER BY task")  # not by the random suffixes
    (first, task_1), (second, task_2) = stored.fetchall()
    assert (task_1, task_2) == (1, 2) and first != second  # a session each: two students on one shared link
    assert first.startswith(desk + ".") and second.startswith(desk + ".")  # record their answers apart


@pytest.mark.parametrize("forged", ["../x", "a" * 10_000, "0123456789abcdef0123456789abcdef"],
                         ids=["path", "10-KB", "uuid"])
def test_a_forged_player_id_in_the_url_is_ignored(folders, forged):
    """Even one with answers on the scoreboard (an older page's session id, or rows another program wrote)."""
    level = challenge.Level(5, False)
    answers = [scoreboard.Answer(level, 1, 1, q + 1, 0, 0, 0) for q in range(challenge.QUERIES)]
    scoreboard.Scoreboard(folders / "board.sqlite3").record(answers, forged)
    app = reopened_challenge_page(forged)
    desk = app.query_params["desk"]
    assert desks.is_desk(desk) and desk != forged and app.session_state["challenge_session"].startswith(desk + ".")
    assert "#### Seed 1 · task 1 · 5-way" in texts(app, "markdown") and "**Query 1 of 5**" in texts(app, "markdown")


def test_one_tab_is_one_player_on_the_draw_and_challenge_pages(folders):
    """A switch of page leaves the URL's desk behind: the Challenge page takes the Draw page's desk, so that a reload
    on either page finds both."""
    app = open_page("pages/draw.py")
    desk = app.query_params["desk"]
    del app.query_params["desk"]
    app.switch_page("pages/challenge.py").run()
    assert not app.exception, app.exception
    assert app.session_state["desk"] == desk and app.query_params["desk"] == desk


def test_unreadable_earlier_answers_are_one_line_and_the_game_starts_afresh(folders, monkeypatch):
    def locked(board, session):
        raise scoreboard.ScoreboardError(f"{board.path}: database is locked")
    monkeypatch.setattr(scoreboard.Scoreboard, "played", locked)
    app = open_challenge_page()
    assert texts(app, "warning") == (f"Your earlier answers cannot be read from the class scoreboard ("
                                     f"{folders / 'board.sqlite3'}: database is locked): you start afresh.")
    play(app, [0] * challenge.QUERIES)
    assert "So far at 5-way: you" in texts(app, "markdown") and not app.error


def test_the_settings_choose_the_task(unseen, folders):
    """Seed 7, 20-way, one alphabet: answering the truth of the task drawn apart from the page scores 5 of 5
    only if the page showed that task."""
    app = open_challenge_page()
    app.number_input(key="challenge_seed").set_value(7).run()
    app.radio(key="challenge_ways").set_value(20).run()
    app.toggle(key="challenge_one_alphabet").set_value(True).run()
    assert "#### Seed 7 · task 1 · 20-way, one alphabet" in texts(app, "markdown")
    assert [b.label for b in app.button if b.key.startswith("challenge_class_")] == list(LETTERS)
    task, _ = expected(unseen, challenge.Level(20, True), seed=7, number=1)
    play(app, task.truth)
    assert "So far at 20-way, one alphabet: you 5 of 5 (100%)" in texts(app, "markdown")
    stored = sqlite3.connect(folders / "board.sqlite3").execute("SELECT DISTINCT ways, one_alphabet, seed FROM answers")
    assert stored.fetchall() == [(20, 1, 7)]
    app.radio(key="challenge_ways").set_value(5).run()  # another level starts at its task 1, unanswered
    assert "#### Seed 7 · task 1 · 5-way, one alphabet" in texts(app, "markdown")
    assert "**Query 1 of 5**" in texts(app, "markdown")
    app.radio(key="challenge_ways").set_value(20).run()  # and back, on to the task after the one played
    assert "#### Seed 7 · task 2 · 20-way, one alphabet" in texts(app, "markdown")


def test_a_session_plays_and_stores_a_bounded_number_of_tasks(unseen, folders, monkeypatch):
    monkeypatch.setattr(scoreboard, "MAX_SESSION_ANSWERS", challenge.QUERIES)  # one task
    app = open_challenge_page()
    play(app, [0] * challenge.QUERIES)
    app.button(key=next(b.key for b in app.button if b.label == "Next task")).click().run()
    assert "This session has played 1 tasks" in texts(app, "info")
    assert not [b for b in app.button if b.key.startswith("challenge_class_")]


def test_a_full_scoreboard_says_so_and_the_game_goes_on(folders, monkeypatch):
    monkeypatch.setattr(scoreboard, "MAX_ROWS", 3)
    app = open_challenge_page()
    play(app, [0] * challenge.QUERIES)
    assert ("This task's answers were not stored on the class scoreboard: it holds 0 of the 3 answers it may hold."
            in texts(app, "warning"))
    assert "So far at 5-way: you" in texts(app, "markdown")


def test_a_corrupt_scoreboard_is_one_line_and_the_game_goes_on(folders):
    (folders / "board.sqlite3").write_bytes(b"not a database " * 100)
    app = open_challenge_page()
    [warning] = app.warning
    assert warning.value == (f"No class scoreboard ({folders / 'board.sqlite3'}: file is not a database): the game "
                             "goes on, but answers are not stored.")
    play(app, [0] * challenge.QUERIES)
    assert "So far at 5-way: you" in texts(app, "markdown") and not app.error


def test_without_omniglot_the_page_says_where_to_get_it_and_stops(folders, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", str(folders / "no-omniglot"))
    app = open_challenge_page()
    assert "Omniglot is not at" in texts(app, "warning")
    assert not app.button and not app.error


def test_without_the_model_the_page_says_which_file_is_missing(folders):
    (folders / "checkpoints" / challenge.MODEL_FILES[20]).unlink()
    app = open_challenge_page()
    app.radio(key="challenge_ways").set_value(20).run()
    assert not app.exception
    missing = folders / "checkpoints" / challenge.MODEL_FILES[20]
    assert f"No model for 20-way tasks: {missing} cannot be read (it ships in checkpoints/)." in texts(app, "error")


def test_two_clicks_on_one_drawn_page_answer_one_query(folders):
    """Two clicks that reach the server before the page is drawn again (a double click, two classes in a hurry):
    the second was meant for the query shown, which the first answered, and is ignored."""
    app = open_challenge_page()
    app.button(key="challenge_class_1").click()
    app.button(key="challenge_class_2").click()
    app.run()
    assert "**Query 2 of 5**" in texts(app, "markdown")
    assert app.session_state["challenge_given"] == [1]


def test_a_model_of_other_ways_is_one_line_before_any_answer(folders):
    """A 20-way model in the 5-way model's file: the page says so and stops, rather than failing with a traceback at
    the model's turn and on every run after it."""
    shutil.copyfile(REPO / "checkpoints" / challenge.MODEL_FILES[20], folders / "checkpoints" / challenge.MODEL_FILES[5])
    app = open_challenge_page()
    assert texts(app, "error") == (f"Cannot use the 5-way model: {challenge.MODEL_FILES[5]} tells 20 classes apart, "
                                   "not 5.")
    assert not [b for b in app.button if b.key.startswith("challenge_class_")]
    app.radio(key="challenge_ways").set_value(20).run()  # the other level's model is fine
    assert not app.exception and not app.error
    play(app, [0] * challenge.QUERIES)
    assert "So far at 20-way: you" in texts(app, "markdown")


def test_a_model_larger_than_the_train_form_allows_is_one_line_and_the_other_level_plays(folders):
    """A larger model copied over the 5-way model's file: adapting it would make the whole class wait (the Draw
    page and uploads refuse it the same way, adaptation.load_adaptable)."""
    channels = limits.maximum("channels") + 1
    save_checkpoint(folders / "checkpoints" / challenge.MODEL_FILES[5], build_model("conv", 5, channels, 2),
                    checkpoint_metadata(Config(channels=channels, blocks=2), iterations=1))
    app = open_challenge_page()
    assert texts(app, "error") == (f"Cannot use the 5-way model: {challenge.MODEL_FILES[5]}: its model is larger "
                                   f"than this server adapts: channels {channels} (at most {channels - 1}).")
    assert not [b for b in app.button if b.key.startswith("challenge_class_")]
    app.radio(key="challenge_ways").set_value(20).run()
    assert not app.exception and not app.error
    play(app, [0] * challenge.QUERIES)
    assert "So far at 20-way: you" in texts(app, "markdown")
