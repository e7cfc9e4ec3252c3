"""The app's Home, Train and Compare pages, driven in-process with Streamlit's AppTest; runs are real processes."""

import dataclasses
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fewshot import runs
from fewshot.config import Config
from waiting import wait_for

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TINY = dict(channels=8, blocks=2, meta_batch=2, val_every=3, val_tasks=4, checkpoint_every=3, test_tasks=10)


@pytest.fixture(autouse=True)
def run_folders(tmp_path, monkeypatch):
    """Runs and kept checkpoints in temporary folders; every run a test started is stopped at its end."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    yield tmp_path
    for run in runs.list_runs(tmp_path / "runs"):
        if run.is_running():
            runs.stop(run)
            wait_for(lambda: not run.is_running(), "the run to stop")


def open_page(page: str | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60).run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def form_field(app: AppTest, name: str):
    """The form's widget for Config field `name` (labelled with its name, spaces for underscores)."""
    [widget] = [w for w in [*app.number_input, *app.selectbox] if w.label == name.replace("_", " ")]
    return widget


def fill_form(app: AppTest, **values) -> None:
    for name, value in values.items():
        form_field(app, name).set_value(value)


def chart_points(app: AppTest, index: int = 0) -> dict:
    """Points per curve of the page's index-th plotly chart: {trace name: number of points}."""
    figure = json.loads(app.get("plotly_chart")[index].proto.spec)
    return {trace["name"]: len(trace.get("x", [])) for trace in figure["data"]}


def progress_text(app: AppTest, index: int = 0) -> str:
    return app.get("progress")[index].proto.text


def texts(app: AppTest) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for e in app.get(kind) if isinstance(getattr(e, "value", None), str))


def test_home_explains_maml_and_shows_a_real_five_way_task(data_root):
    app = open_page()
    assert app.title[0].value == "Few-shot learning with MAML"
    assert len(app.get("latex")) >= 3  # inner update, outer update, and what first order drops
    assert "First-order MAML" in texts(app) and "**Compare**" in texts(app)
    assert len(app.get("image")) == 1
    app.button[0].click().run()  # another task
    assert not app.exception and len(app.get("image")) == 1


def test_train_form_has_every_option_and_fills_from_presets(data_root):
    app = open_page("pages/train.py")
    for field in dataclasses.fields(Config):
        if field.name not in ("data_root", "init_from"):  # paths: the command line's (--data-root, --init-from)
            assert form_field(app, field.name).help == field.metadata["help"]
    assert form_field(app, "algorithm").options == ["maml", "fomaml"]
    assert form_field(app, "algorithm").value == "fomaml" and form_field(app, "channels").value == 32
    form_field(app, "channels").set_value(16).run()
    app.selectbox(key="train_preset").set_value("MAML paper 5-way 1-shot").run()
    assert form_field(app, "algorithm").value == "maml"
    assert form_field(app, "channels").value == 64
    assert form_field(app, "iterations").value == 60000
    assert form_field(app, "meta_batch").value == 32
    assert form_field(app, "inner_lr").value == 0.4
    assert form_field(app, "split").value == "maml-paper"
    assert "No runs yet" in texts(app)


def test_train_page_starts_a_run_charts_it_live_stops_it_and_keeps_its_checkpoint(data_root, run_folders):
    app = open_page("pages/train.py")
    fill_form(app, iterations=100_000, **TINY)
    app.button(key="FormSubmitter:train_form-Start").click().run()
    assert not app.exception and not app.error
    [run] = runs.list_runs()
    assert run.config().channels == 8 and run.config().algorithm == "fomaml"
    wait_for(lambda: len(run.metrics()) >= 4, "four iterations")
    app.run()
    points = chart_points(app)
    assert points["meta-train"] >= 4 and points["validation"] >= 1
    assert "tasks/s" in progress_text(app) and "left" in progress_text(app)

    app.button(key="train_stop").click().run()
    wait_for(lambda: not run.is_running(), "the run to stop")
    app.run()
    assert run.status() == runs.STOPPED and not app.exception
    assert progress_text(app).endswith(": stopped")
    assert app.get("download_button")
    app.text_input[0].set_value("tiny-demo")
    app.button(key="FormSubmitter:keep_form-Keep checkpoint for the Draw page").click().run()
    assert "Kept as tiny-demo.safetensors" in app.success[0].value
    assert (run_folders / "checkpoints" / "tiny-demo.safetensors").read_bytes() == run.checkpoint.read_bytes()
    app.button(key="FormSubmitter:keep_form-Keep checkpoint for the Draw page").click().run()
    assert "already exists" in app.error[0].value
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/train.py").run()  # the form as it was started, not the preset's defaults
    assert form_field(app, "channels").value == 8 and form_field(app, "iterations").value == 100_000


def test_train_page_shows_a_finished_run_with_its_test_accuracy(data_root):
    run = runs.start(Config(data_root=data_root, iterations=3, **TINY))
    wait_for(lambda: not run.is_running(), "the run to finish")
    app = open_page("pages/train.py")
    [metric] = app.metric
    assert metric.label.startswith("Test accuracy (lake/test, 5-way 1-shot)")
    assert " % ± " in metric.value
    assert chart_points(app)["validation"] == 1


def test_train_page_errors_are_messages_not_tracebacks(data_root):
    app = open_page("pages/train.py")
    fill_form(app, shots=10, queries=15)
    app.button(key="FormSubmitter:train_form-Start").click().run()
    assert not app.exception
    assert "shots + queries must be at most 20" in app.error[0].value
    assert runs.list_runs() == []

    fill_form(app, shots=1, queries=5, ways=5000, **TINY)  # the sampler refuses it, in the process
    app.button(key="FormSubmitter:train_form-Start").click().run()
    [run] = runs.list_runs()
    wait_for(lambda: not run.is_running(), "the run to fail")
    app.run()
    assert not app.exception
    assert "failed: error: 5000 ways need at least 5000 classes" in app.error[0].value


def test_compare_page_runs_both_orders_side_by_side_and_stops_them(data_root):
    app = open_page("pages/compare.py")
    assert "First-order MAML drops that Hessian term" in texts(app)
    fill_form(app, iterations=100_000, **TINY)
    app.button(key="FormSubmitter:compare_form-Start MAML and FOMAML").click().run()
    assert not app.exception and not app.error
    started = runs.list_runs()
    assert sorted(run.config().algorithm for run in started) == ["fomaml", "maml"]
    wait_for(lambda: all(len(run.metrics()) >= 3 for run in started), "three iterations of both")
    app.run()
    for chart in (0, 1):  # against iterations, against seconds
        points = chart_points(app, chart)
        assert points.get("MAML · meta-train", 0) >= 3 and points.get("FOMAML · meta-train", 0) >= 3, points
    assert sorted(app.multiselect[0].value) == sorted(run.name for run in started)  # kept while they train
    table = app.dataframe[0].value
    assert sorted(table["algorithm"]) == ["fomaml", "maml"]
    assert (table["peak memory (MB)"] > 0).all() and (table["s / iteration"] > 0).all()

    app.button(key="compare_stop").click().run()
    wait_for(lambda: not any(run.is_running() for run in started), "both runs to stop")
    app.run()
    assert [run.status() for run in started] == [runs.STOPPED, runs.STOPPED]
    assert not app.exception


def test_compare_page_on_a_fresh_machine_shows_the_shipped_checkpoints_runs(tmp_path, monkeypatch):
    """No dataset and no run of its own: the curves of the shipped MAML and FOMAML checkpoints, chosen for it."""
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(Path(APP).parent / "checkpoints"))
    app = open_page("pages/compare.py")
    shipped = runs.list_runs(runs.shipped_runs_root())
    assert sorted(run.config().algorithm for run in shipped) == ["fomaml", "maml"]
    assert all(run.status() == runs.FINISHED for run in shipped)
    assert sorted(app.multiselect[0].value) == sorted(run.name for run in shipped)
    points = chart_points(app)
    for algorithm, run in ((run.config().algorithm.upper(), run) for run in shipped):
        validations = [record for record in run.metrics() if "val_accuracy" in record]
        assert points[f"{algorithm} · meta-train"] > 1000 and points[f"{algorithm} · validation"] == len(validations)
    assert sorted(app.dataframe[0].value["algorithm"]) == ["fomaml", "maml"]
    assert not app.exception


def test_app_without_the_dataset_starts_and_says_how_to_get_omniglot(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "empty"))
    app = open_page()
    assert "not on this machine" in texts(app) and not app.get("image")
    for page, start in (("pages/train.py", "FormSubmitter:train_form-Start"),
                        ("pages/compare.py", "FormSubmitter:compare_form-Start MAML and FOMAML")):
        app.switch_page(page).run()
        assert not app.exception
        warning = app.warning[0].value
        assert "Omniglot is not at" in warning and "FEWSHOT_DATA" in warning and "images_background.zip" in warning
        assert app.button(key=start).disabled
