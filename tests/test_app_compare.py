"""The Compare page against what a class can throw at it: long runs, many runs, forged choices. Run folders are
written by hand (fake_runs.py); no process, no dataset."""

import collections

import pytest
from streamlit.testing.v1 import AppTest

from apptests import chart_rows, open_page
from fake_runs import record, run_folder
from fewshot import plots, runs
from fewshot.config import Config



@pytest.fixture(autouse=True)
def run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "runs"


def compare_page() -> AppTest:
    return open_page("pages/compare.py")


def validated(iteration: int) -> dict:
    return {**record(iteration), "val_loss": 1.0, "val_accuracy": 0.5}


def test_a_long_runs_validations_are_thinned_like_its_training_curve_and_its_last_point_is_drawn(run_folders,
                                                                                               monkeypatch):
    """A run validated every iteration (val_every 1, which the form takes) sent every validation: 100,000 a run,
    15 MB a chart, 65 MB a redraw of the page, every 2 s while it trained."""
    monkeypatch.setattr(plots, "MAX_POINTS", 40)
    iterations = 401  # not a multiple of the thinning's step: the last record is the one thinning drops
    for algorithm in ("maml", "fomaml"):
        run_folder(run_folders, algorithm, comparison="c", config=Config(iterations=iterations, algorithm=algorithm),
                   metrics=[validated(i) for i in range(1, iterations + 1)])
    app = compare_page()
    assert sorted(app.multiselect[0].value) == ["fomaml", "maml"]
    for index in range(4):  # loss and accuracy, against iterations and against seconds
        by_series = collections.defaultdict(list)
        for row in chart_rows(app.get("vega_lite_chart")[index]):
            by_series[row["series"]].append(row["x"])
        assert len(by_series) == 4, by_series.keys()  # each run's meta-train and validation curves
        last = {"x": iterations if index < 2 else record(iterations)["seconds"]}
        for series, xs in by_series.items():
            assert len(xs) <= plots.MAX_POINTS, (series, len(xs))
            assert max(xs) == last["x"], series  # the run's latest state is on the chart


def test_the_page_overlays_a_bounded_number_of_runs_however_many_are_chosen(run_folders):
    """All runs of a class chosen at once (hundreds): each drawn, four charts, a progress bar and a row apiece, at
    every redraw; the browser lets a choice of more than the menu's max_selections through as it is."""
    names = [f"run-{index:02d}" for index in range(12)]
    for index, name in enumerate(names):
        run_folder(run_folders, name, metrics=[record(1), record(2)], started=float(index),
                   config=Config(iterations=6, algorithm=("maml", "fomaml")[index % 2]))
    app = compare_page()
    app.multiselect[0].set_value(names).run()
    assert not app.exception, app.exception
    shown = list(app.dataframe[0].value["run"])
    assert 2 <= len(shown) <= app.multiselect[0].proto.max_selections and len(app.get("progress")) == len(shown)
    assert sorted(app.multiselect[0].value) == sorted(shown)  # the menu says which
    runs_drawn = {row["run"] for row in chart_rows(app.get("vega_lite_chart")[0])}
    assert len(runs_drawn) == len(shown)


def test_a_run_chosen_twice_is_shown_once(run_folders):
    """The browser sends the choice as it likes; a stopped run listed twice drew two Resume buttons of one key."""
    for name, algorithm in (("m", "maml"), ("f", "fomaml")):
        run = run_folder(run_folders, name, metrics=[record(1)], config=Config(iterations=6, algorithm=algorithm))
        (run.path / runs.STOP_REQUESTED).write_text("")
    app = compare_page()
    app.multiselect[0].set_value(["m", "m", "f"]).run()
    assert not app.exception, app.exception
    assert sorted(app.dataframe[0].value["run"]) == ["f", "m"]
