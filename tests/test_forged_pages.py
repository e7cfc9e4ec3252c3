"""The Train and Compare pages against widget values that a tampered browser sends over the websocket (tests/forged.py),
beyond what their widgets offer: run names that no menu lists, megabytes long or full of markdown, and a name for a
kept checkpoint of megabytes. One server for the module, with an instructor key, over two finished runs written by
hand (fake_runs); nothing trains.

A page says "Run ... was deleted" of a run it showed before; the menus' values are what the browser sends, anything
up to Streamlit's 25 MB a message. Echoed, a name of 20 MB of "*" took 34 s of the server (ui.literal escapes each
one), every other session waiting meanwhile, and went back as 40 MB.
"""

import pytest

from browser import served_app
from fake_runs import record, run_folder
from fewshot.config import Config
from forged import FINISHED, ForgedSession, text, texts, trigger

KEY = "rosebud-42"
RUNS = {"done-maml": "maml", "done-fomaml": "fomaml"}  # finished runs, with a checkpoint each
MADE_UP = ["*" * 1_000_000, "**bold** <b>x</b> $x$", "../../etc/passwd\0"]  # names of runs that never were
REPLY_BYTES = 100_000  # a page with its form and a chart or two is about 20 KB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app with an instructor key over the finished runs. Yields (url, folder)."""
    folder = tmp_path_factory.mktemp("forged-pages")
    for name, algorithm in RUNS.items():
        run_folder(folder / "runs", name, metrics=[record(i) for i in range(1, 7)], checkpoint=b"weights",
                   config=Config(iterations=6, test_tasks=0, algorithm=algorithm))
    with served_app(folder, FEWSHOT_INSTRUCTOR_KEY=KEY, FEWSHOT_RUNS=str(folder / "runs"),
                    FEWSHOT_CHECKPOINTS=str(folder / "checkpoints")) as url:
        yield url, folder


def reply_bytes(session: ForgedSession) -> int:
    return sum(element.ByteSize() for element in session.elements)


def deleted_warnings(session: ForgedSession) -> list:
    return [alert for alert in session.texts("alert") if "was deleted" in alert]


def assert_quiet(session: ForgedSession) -> None:
    """The run ended without an exception, said no run was deleted, and sent back what a page is."""
    assert session.finished == FINISHED and session.texts("exception") == []
    assert [alert[:80] for alert in deleted_warnings(session)] == [] and reply_bytes(session) < REPLY_BYTES


def test_run_names_that_no_menu_lists_are_not_said_to_be_deleted_nor_sent_back(server):
    url, _ = server
    with ForgedSession(url) as student:
        student.open("train")
        [(_, menu)] = student.widgets("Run")
        for name in MADE_UP:
            student.run(text(student.widget("Run"), name))
            assert_quiet(student)
            assert student.widgets("Run")[0][1].raw_value == menu.raw_value  # the run it showed before
        student.open("compare")
        for names in (MADE_UP * 2, ["done-maml"] * 50 + ["done-fomaml", "gone"] + [f"r{i}" for i in range(10)]):
            student.run(texts(student.widget("Runs to overlay"), names))
            assert_quiet(student)
        [(_, chosen)] = student.widgets("Runs to overlay")
        assert [label.split(" · ")[0] for label in chosen.raw_values] == ["done-maml", "done-fomaml"]


def test_a_checkpoint_name_of_megabytes_is_cut_to_the_fields_bound(server):
    """Without a bound, the field kept all the 25 MB that a message may carry, in every session that sent them (3
    sessions with 20 MB each: the server's memory 774 MB, then 987); Keep then showed them back in its error."""
    url, folder = server
    with ForgedSession(url) as instructor:
        instructor.open("train")
        instructor.run(text(instructor.widget("Instructor key"), KEY), trigger(instructor.widget("Unlock")))
        name = instructor.widget("Name for the Draw page")
        instructor.run(text(name, "../" * 1_000_000), trigger(instructor.widget("Keep checkpoint for the Draw page")))
        [refused] = instructor.texts("alert")
        assert "is not a usable name" in refused and len(refused) < 1000
        assert reply_bytes(instructor) < REPLY_BYTES and not (folder / "checkpoints").exists()
