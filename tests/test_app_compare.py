"""The Compare page against what a class can throw at it: long runs, many runs, forged choices. Run folders are
written by hand (fake_runs.py); no process, no dataset."""

import collections
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from apptests import chart_rows, open_page
from fake_runs import record, run_folder
from fewshot import plots, runs
from fewshot.config import Config
from test_app import ODD_NAME, as_shown, between



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
    monkeypatch.setattr(plots, "MAX_VALIDATION_POINTS", 20)
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
            most = plots.MAX_VALIDATION_POINTS if series.endswith("validation") else plots.MAX_POINTS
            assert len(xs) <= most, (series, len(xs))
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


def probed(iteration: int) -> dict:
    numbers = {"cosine": 0.9, "norm_ratio": 1.0, "dropped_norm": 0.1, "g2_norm": 1.0}
    layers = ("block 1", "block 2", "block 3", "block 4", "classifier")  # Config's default network
    return {**validated(iteration), "probe": {**numbers, "layers": dict.fromkeys(layers, numbers)}}


def test_a_redraw_of_two_long_runs_sends_at_most_a_classrooms_share_of_chart_data(run_folders):
    """Every viewer gets every chart's data at every redraw (2 s): two runs of 20,000 iterations, each validated,
    MAML's probed every 10, sent 2.7 MB a redraw; a classroom's WiFi (a few MB/s) shared by 30 viewers leaves each
    about 50 KB/s, 100 KB a redraw."""
    iterations = 20_000
    for algorithm in ("maml", "fomaml"):
        run_folder(run_folders, algorithm, comparison="c", config=Config(iterations=iterations, algorithm=algorithm),
                   metrics=[probed(i) if algorithm == "maml" and i % 10 == 0 else validated(i)
                            for i in range(1, iterations + 1)])
    app = compare_page()
    charts = app.get("vega_lite_chart")
    assert len(charts) == 4 + len(plots.PROBE_PANELS)
    assert sum(len(chart.proto.data.data) for chart in charts) < 100_000
    seconds = record(iterations)["seconds"]
    latest = [iterations, iterations, seconds, seconds] + [iterations] * len(plots.PROBE_PANELS)
    for chart, last in zip(charts, latest):  # each still draws the runs' latest state
        assert max(row.get("x", row.get("iteration")) for row in chart_rows(chart)) == last


def test_run_names_with_markdown_in_them_show_as_they_are_on_the_compare_page(run_folders):
    """Two MAML runs, so that their curves and probe charts are told apart by their names."""
    names = [ODD_NAME, f"{ODD_NAME} 2"]
    for name in names:
        run_folder(run_folders, name, metrics=[probed(1), probed(2)], config=Config(iterations=6, algorithm="maml"))
    app = compare_page()
    app.multiselect[0].set_value(names).run()
    assert not app.exception
    shown = sorted(as_shown(between(progress.proto.text, "**", "** · iteration")) for progress in app.get("progress"))
    assert shown == [(name, "") for name in names]
    labels = [markdown.value for markdown in app.markdown if markdown.value.startswith("**MAML ")]
    assert sorted(as_shown(label.removeprefix("**MAML ").removesuffix("**")) for label in labels) == shown

    shutil.rmtree(run_folders / names[1])
    app.run()
    [gone] = [warning.value for warning in app.warning if "was deleted" in warning.value]
    assert as_shown(between(gone, "Run ", " was deleted.")) == (names[1], "")
