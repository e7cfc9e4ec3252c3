"""The app's Home, Train and Compare pages, driven in-process with Streamlit's AppTest; runs are real processes."""

import collections
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from apptests import APP, open_page
from fake_runs import record, run_folder
from app_ui import field_label
from fewshot import limits, plots, runs
from fewshot.config import Config
from fewshot.presets import ABOUT, PRESETS
from waiting import outcome_within, wait_for

REPO = Path(__file__).resolve().parents[1]
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


def form_field(app: AppTest, name: str):
    """The form's widget for Config field `name` (labelled in plain words: app_ui.field_label)."""
    [widget] = [w for w in [*app.number_input, *app.selectbox, *app.checkbox] if w.label == field_label(name)]
    return widget


def fill_form(app: AppTest, **values) -> None:
    for name, value in values.items():
        form_field(app, name).set_value(value)


def chart_points(app: AppTest, index: int = 0) -> dict:
    """Points per curve of the page's index-th chart (a Vega-Lite chart, its rows in Arrow): {curve: points}."""
    chart = app.get("vega_lite_chart")[index].proto
    rows = pyarrow.ipc.open_stream(chart.data.data).read_all().to_pylist()
    return dict(collections.Counter(row["series"] for row in rows))


def progress_text(app: AppTest, index: int = 0) -> str:
    return app.get("progress")[index].proto.text


def keep_button(run: runs.Run) -> str:
    """The key of the Train page's button that keeps `run`'s checkpoint."""
    return f"FormSubmitter:keep_{run.name}-Keep checkpoint for the Draw page"


def run_choices(app: AppTest) -> list:
    """The names of the runs the Train page's run menu offers (its options are labels: name · ...)."""
    [menu] = [w for w in app.selectbox if w.label == "Run"]
    return [option.split(" · ")[0] for option in menu.options]


def texts(app: AppTest) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for e in app.get(kind) if isinstance(getattr(e, "value", None), str))


def test_home_explains_maml_and_shows_a_real_five_way_task(data_root):
    app = open_page()
    assert app.title[0].value == "Few-shot learning with MAML"
    assert len(app.get("latex")) >= 3  # inner update, outer update, and what first order drops
    assert "First-order MAML" in texts(app) and "**Compare**" in texts(app)
    assert len(app.get("image")) == 1
    [support, _, query] = app.columns  # the headings over the task's two parts, side by side
    assert support.markdown[0].value == "**Support**" and query.markdown[0].value.startswith("**Query**")


def test_home_another_task_shows_a_new_task_and_a_rerun_keeps_it(data_root):
    """An image's URL names a hash of its bytes (Streamlit's media files): another picture, another URL."""
    app = open_page()
    shown = [task_picture_url(app)]
    app.run()
    assert task_picture_url(app) == shown[0]  # the same task while the button is not pressed
    for _ in range(2):
        [another] = [button for button in app.button if button.label == "Another task"]
        another.click().run()
        assert not app.exception
        shown.append(task_picture_url(app))
    assert len(set(shown)) == 3, shown


def task_picture_url(app: AppTest) -> str:
    [image] = app.get("image")
    [url] = image.value
    return url


def test_train_form_has_every_option_and_fills_from_presets(data_root):
    app = open_page("pages/train.py")
    for field in dataclasses.fields(Config):
        if field.name not in ("data_root", "init_from"):  # paths: the command line's (--data-root, --init-from)
            help = form_field(app, field.name).help  # the field's help, and the name that finds it in the CLI
            assert field.metadata["help"] in help and f"`--{field.name.replace('_', '-')}`" in help, help
    for name, words in (("inner_lr", "α"), ("outer_lr", "β"), ("meta_batch", "tasks per meta-update")):
        assert words in form_field(app, name).label  # plain words, tied to the equations' symbols
    assert form_field(app, "algorithm").options == ["maml", "fomaml"]
    assert form_field(app, "algorithm").value == "maml" and form_field(app, "channels").value == 32
    form_field(app, "channels").set_value(16).run()
    app.selectbox(key="train_preset").set_value("MAML paper 5-way 1-shot").run()
    assert form_field(app, "algorithm").value == "maml"
    assert form_field(app, "channels").value == 64
    assert form_field(app, "iterations").value == 60000
    assert form_field(app, "meta_batch").value == 32
    assert form_field(app, "inner_lr").value == 0.4
    assert form_field(app, "split").value == "maml-paper"
    assert "No runs yet" in texts(app)
    for name in PRESETS:  # each says what it costs, measured
        app.selectbox(key="train_preset").set_value(name).run()
        assert ABOUT[name] in texts(app) and ABOUT[name].startswith("Measured:"), name


@pytest.mark.parametrize("page, prefix, start", [("pages/train.py", "train", "Start"),
                                                  ("pages/compare.py", "compare", "Start MAML and FOMAML")])
def test_the_forms_preset_and_fields_are_kept_while_another_page_is_shown(data_root, monkeypatch, page, prefix,
                                                                          start):
    """Streamlit forgets the widgets of a page not shown; these persist for the session (persist_state).
    A form sends its fields when Start is pressed (in AppTest as in the browser): a memory limit that no run
    fits keeps the press from starting anything."""
    monkeypatch.setenv("FEWSHOT_MAX_MEMORY_GB", "0.001")
    app = open_page(page)
    app.selectbox(key=f"{prefix}_preset").set_value("MAML paper 5-way 1-shot").run()
    assert form_field(app, "channels").value == 64 and form_field(app, "split").value == "maml-paper"
    fill_form(app, channels=16, split="lake")
    app.button(key=f"FormSubmitter:{prefix}_form-{start}").click().run()
    assert app.error[0].value.startswith("Cannot start: this run would need about") and runs.list_runs() == []
    app.switch_page("pages/home.py").run()
    app.switch_page(page).run()
    assert not app.exception
    assert app.selectbox(key=f"{prefix}_preset").value == "MAML paper 5-way 1-shot"
    assert form_field(app, "channels").value == 16 and form_field(app, "split").value == "lake"


def test_train_page_starts_a_run_charts_it_live_stops_it_and_keeps_its_checkpoint(data_root, run_folders):
    app = open_page("pages/train.py")
    fill_form(app, iterations=100_000, **TINY)
    app.button(key="FormSubmitter:train_form-Start").click().run()
    assert not app.exception and not app.error
    [run] = runs.list_runs()
    assert run.config().channels == 8 and run.config().algorithm == "maml"
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
    assert app.get("download_button") and not app.metric
    app.button(key="train_evaluate").click().run()  # its test accuracy, measured in the background
    assert "Measuring run" in app.success[0].value and run.is_running()
    wait_for(lambda: not run.is_running(), "the evaluation to end")
    app.run()
    assert run.status() == runs.FINISHED and app.metric[0].label.startswith("Test accuracy")
    app.text_input[0].set_value("tiny-demo")
    app.button(key=keep_button(run)).click().run()
    assert "Kept as tiny-demo.safetensors" in app.success[0].value
    assert (run_folders / "checkpoints" / "tiny-demo.safetensors").read_bytes() == run.checkpoint.read_bytes()
    app.button(key=keep_button(run)).click().run()
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


def test_train_page_errors_are_messages_not_tracebacks(data_root, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_WAYS", "1000")  # an instructor's limit, above what Omniglot's splits hold
    app = open_page("pages/train.py")
    assert form_field(app, "ways").min == 2  # a 1-way task has nothing to tell apart
    fill_form(app, shots=10, queries=15, outer_lr=0.0)
    app.button(key="FormSubmitter:train_form-Start").click().run()
    assert not app.exception
    [error] = app.error  # every bad field at once
    assert "shots + queries must be at most 20" in error.value and "outer_lr must be greater than 0" in error.value
    assert runs.list_runs() == []
    fill_form(app, outer_lr=0.001)

    fill_form(app, shots=1, queries=5, ways=1000, **TINY)  # the sampler refuses it, in the process
    app.button(key="FormSubmitter:train_form-Start").click().run()
    [run] = runs.list_runs()
    wait_for(lambda: not run.is_running(), "the run to fail")
    app.run()
    assert not app.exception
    assert "failed: error: 1000 ways need at least 1000 classes" in app.error[0].value


def test_the_form_caps_every_size_at_the_servers_limits(monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_CHANNELS", "100")
    app = open_page("pages/train.py")
    for name in limits.MAXIMA:
        assert form_field(app, name).max == limits.maximum(name), name
    assert form_field(app, "channels").max == 100 and form_field(app, "meta_batch").max == 128


BAD_SETTINGS = {"FEWSHOT_MAX_CHANNELS": "-3", "FEWSHOT_MAX_WAYS": "1", "FEWSHOT_MAX_RUNS": "abc",
                "FEWSHOT_INSTRUCTOR_KEY": "   "}  # in the order the pages say them


def test_bad_settings_are_said_one_line_each_on_every_page_instead_of_a_traceback(monkeypatch):
    """app.py checks the settings before any page; Train and Compare check them too, as a fresh server serves a
    page's file alone (AppTest's switch_page does too). FEWSHOT_MAX_WAYS=1 would leave the form's 2-way minimum
    above its maximum (Streamlit raises), FEWSHOT_MAX_RUNS=abc break the form's note on running runs."""
    for variable, value in BAD_SETTINGS.items():
        monkeypatch.setenv(variable, value)
    app = AppTest.from_file(APP, default_timeout=60).run()
    for page in (None, "pages/train.py", "pages/compare.py"):  # None: app.py, which would show Home
        if page:
            app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        errors = [error.value for error in app.error]
        assert len(errors) == len(BAD_SETTINGS) and all("\n" not in error for error in errors), (page, errors)
        for error, variable in zip(errors, BAD_SETTINGS):
            assert error.startswith(f"{variable} ") and "restarts the server" in error, (page, error)
        assert not app.selectbox and not app.number_input and not app.button  # the page stopped there


def test_a_limit_at_the_fields_least_value_gives_a_form_field_of_that_value(monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_WAYS", "2")
    app = open_page("pages/train.py")
    ways = form_field(app, "ways")
    assert ways.min == ways.max == ways.value == 2 and not app.error


def test_sizes_that_together_need_too_much_memory_are_refused_and_nothing_starts(data_root):
    app = open_page("pages/train.py")
    fill_form(app, channels=128, ways=50, shots=10, queries=10)  # each within its maximum
    app.button(key="FormSubmitter:train_form-Start").click().run()
    assert not app.exception
    [error] = app.error
    assert error.value.startswith("Cannot start: this run would need about ") and "FEWSHOT_MAX_MEMORY_GB" in error.value
    assert runs.list_runs() == []


def test_every_start_press_is_answered_and_past_the_run_limit_queued_with_its_place(data_root, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    app = open_page("pages/train.py")
    fill_form(app, iterations=100_000, **TINY)
    app.button(key="FormSubmitter:train_form-Start").click().run()
    [run] = runs.list_runs()
    [started] = [message.value for message in app.success]
    assert started.startswith(f"Started run {run.name}:") and run.is_running()
    app.run()
    assert [n.value for n in app.info if "1 run training; this server trains 1 at once. Start queues" in n.value]
    for place in range(3):
        app.button(key="FormSubmitter:train_form-Start").click().run()
        newest = runs.list_runs()[0]
        assert [message.value for message in app.success] == [
            f"Queued {newest.name}: {place} {'run' if place == 1 else 'runs'} ahead. This server trains 1 at once; "
            "it starts by itself when a place frees."]
        assert newest.status() == runs.QUEUED and "queued, " in progress_text(app)
    app.switch_page("pages/compare.py").run()
    fill_form(app, **TINY)
    app.button(key="FormSubmitter:compare_form-Start MAML and FOMAML").click().run()
    assert [message.value for message in app.error] == [
        "Cannot start: A comparison trains 2 runs at once; this server trains at most 1 (FEWSHOT_MAX_RUNS)."]
    assert len(runs.list_runs()) == 4 and sum(r.is_running() for r in runs.list_runs()) == 1
    for queued in runs.list_runs():  # that none of them starts while the fixture stops the first
        runs.stop(queued)


def test_the_server_listens_on_this_machine_only_and_shows_no_tracebacks():
    """`streamlit run app.py`, as the README says, with the repository's .streamlit/config.toml."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server.poll() is not None or answers(f"http://127.0.0.1:{port}/_stcore/health"),
                 "the server to answer", timeout=30)
        assert server.poll() is None
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert streamlit_option("client.showErrorDetails") == "none"


def test_the_server_does_not_collect_all_garbage_after_every_script_run():
    """Streamlit's gc.collect(2) after each run held the interpreter 220 ms with the app loaded: a class' sessions
    and the Train pages' live refresh kept the server busy with it alone (issue 14's load test)."""
    assert streamlit_option("runner.postScriptGC") == "False"


def test_the_server_hands_the_interpreter_from_session_to_session_every_fifth_of_a_millisecond():
    """With Python's default 5 ms, the Draw page's 46 ms adaptation took 4.7 s beside one busy session thread."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        open_page()
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    finally:
        sys.setswitchinterval(before)


def streamlit_option(name: str) -> str:
    """The value of a Streamlit option as `streamlit run app.py` reads it, from the repository's config.toml."""
    code = f"import streamlit.config as c; c.get_config_options(); print(c.get_option({name!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def listening_addresses(port: int) -> list:
    """The addresses of this machine's sockets listening on TCP `port`, from Linux's /proc/net/tcp and tcp6."""
    addresses = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN; each 32-bit word in host byte order
                words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8)]
                addresses.append(socket.inet_ntop(family, b"".join(words)))
    return addresses


def test_compare_page_runs_both_orders_on_one_config_side_by_side_and_stops_them(data_root):
    app = open_page("pages/compare.py")
    assert "First-order MAML drops that Hessian term" in texts(app)
    fill_form(app, iterations=100_000, seed=7, **TINY)
    app.button(key="FormSubmitter:compare_form-Start MAML and FOMAML").click().run()
    assert not app.exception and not app.error
    started = runs.list_runs()
    maml, fomaml = (saved_config(run) for run in sorted(started, key=lambda run: run.config().algorithm != "maml"))
    assert (maml.pop("algorithm"), fomaml.pop("algorithm")) == ("maml", "fomaml")
    assert maml == fomaml and maml["seed"] == 7 and maml["channels"] == 8  # the form's, the seed included
    wait_for(lambda: all(len(run.metrics()) >= 3 for run in started), "three iterations of both")
    app.run()
    for chart in (0, 2):  # loss against iterations, against seconds
        points = chart_points(app, chart)
        assert points.get("MAML · meta-train", 0) >= 3 and points.get("FOMAML · meta-train", 0) >= 3, points
    assert sorted(app.multiselect[0].value) == sorted(run.name for run in started)  # kept while they train
    table = app.dataframe[0].value
    assert sorted(table["run"]) == sorted(run.name for run in started)
    assert all(float(value) > 0 for column in ("memory MB", "s / it") for value in table[column]), table
    assert re.search(r"MAML: \d+ % (slower|faster) per iteration", texts(app))  # the takeaway, computed

    app.button(key="compare_stop").click().run()
    wait_for(lambda: not any(run.is_running() for run in started), "both runs to stop")
    app.run()
    assert [run.status() for run in started] == [runs.STOPPED, runs.STOPPED]
    assert not app.exception


def saved_config(run: runs.Run) -> dict:
    """The config.json that the run's training process writes first thing."""
    wait_for(lambda: (run.path / "config.json").exists(), f"{run.name}'s config.json")
    return json.loads((run.path / "config.json").read_text())


def test_compare_page_on_a_fresh_machine_chooses_no_unequal_pair_and_says_how_the_shipped_runs_differ(tmp_path,
                                                                                                      monkeypatch):
    """No dataset and no run of its own: the shipped MAML and FOMAML runs trained unequally (19,538 against 9,429
    iterations, other outer step sizes), so none is chosen; chosen by hand, the page says how they differ, and the
    table shows a dash where the shipped records have no training memory, never "None"."""
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(Path(APP).parent / "checkpoints"))
    app = open_page("pages/compare.py")
    shipped = runs.list_runs(runs.shipped_runs_root())
    assert sorted(run.config().algorithm for run in shipped) == ["fomaml", "maml"]
    assert all(run.status() == runs.FINISHED for run in shipped)
    assert app.multiselect[0].value == [] and "None is chosen for you" in texts(app)
    app.multiselect[0].set_value([run.name for run in shipped]).run()
    iterations = sorted(run.config().iterations for run in shipped)
    assert "differ in more than the algorithm" in texts(app) and str(iterations[0]) in texts(app)
    points = chart_points(app)
    for algorithm, run in ((run.config().algorithm.upper(), run) for run in shipped):
        validations = [record for record in run.metrics() if "val_accuracy" in record]
        assert len(run.metrics()) > plots.MAX_POINTS  # so thinned, to at most MAX_POINTS, evenly spaced
        assert plots.MAX_POINTS // 2 < points[f"{algorithm} · meta-train"] <= plots.MAX_POINTS
        shown = points[f"{algorithm} · validation"]
        assert (shown == len(validations) if len(validations) <= plots.MAX_VALIDATION_POINTS else
                plots.MAX_VALIDATION_POINTS // 2 < shown <= plots.MAX_VALIDATION_POINTS)
    table = app.dataframe[0].value
    assert sorted(table["run"]) == sorted(run.name for run in shipped)
    assert list(table["memory MB"]) == ["—", "—"] and "None" not in table.to_string()
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


def test_train_page_says_how_many_metrics_lines_it_could_not_read(run_folders):
    run_folder(run_folders / "runs", "garbled", metrics=[record(1), "garbage", record(2), "{}", record(3)])
    app = open_page("pages/train.py")
    assert "2 unreadable lines in metrics.jsonl skipped" in texts(app)
    assert chart_points(app)["meta-train"] == 3


def test_the_download_of_a_checkpoint_that_is_a_fifo_fails_at_once(run_folders, monkeypatch):
    """Streamlit reads a download's data in a thread of its own when it is pressed: reading a FIFO waited for ever."""
    run = run_folder(run_folders / "runs", "stopped", metrics=[record(1)], checkpoint=b"weights")
    (run.path / runs.STOP_REQUESTED).write_text("")
    run.checkpoint.unlink()
    os.mkfifo(run.checkpoint)
    offered, download_button = [], st.download_button
    monkeypatch.setattr(st, "download_button",
                        lambda label, data, **options: offered.append(data) or download_button(label, data, **options))
    open_page("pages/train.py")
    [data] = offered
    error = outcome_within(data)
    assert isinstance(error, ValueError) and str(error) == "checkpoint.safetensors is not a regular file"


def test_figures_a_hand_edit_garbled_show_as_none_not_as_nan_or_a_traceback(run_folders):
    """evaluation.json with NaN (JSON readers take it) showed "nan % ± nan %"; a record's memory that is no number
    broke the Compare page's table."""
    pair = {algorithm: run_folder(run_folders / "runs", algorithm, checkpoint=b"weights",
                                  config=Config(iterations=2, algorithm=algorithm),
                                  metrics=[record(1) | {"training_memory_mb": memory}, record(2)])
            for algorithm, memory in (("maml", "x"), ("fomaml", 20.0))}
    (pair["maml"].path / "evaluation.json").write_text(json.dumps(
        {"split": "lake/test", "accuracy": float("nan"), "ci95": float("nan"), "tasks": 1, "inner_steps": 3,
         "ways": 5, "shots": 1}))
    app = open_page("pages/train.py")
    app.selectbox(key="train_run_menu").set_value("maml").run()
    assert not app.exception and not app.metric and "nan" not in texts(app)
    app.switch_page("pages/compare.py").run()
    app.multiselect[0].set_value(["maml", "fomaml"]).run()
    assert not app.exception
    [table] = app.dataframe
    assert "nan" not in table.value.to_string() and list(table.value["memory MB"]) == ["—", "20"]


def test_pages_show_every_run_despite_an_unreadable_launch_json(run_folders):
    run_folder(run_folders / "runs", "good", metrics=[record(1)], started=100.0)
    garbled = run_folder(run_folders / "runs", "garbled", launch='{"pid": "not a process"')
    (garbled.path / "config.json").write_text(json.dumps(Config(iterations=6).to_dict()))
    app = open_page("pages/train.py")
    assert run_choices(app) == ["garbled", "good"]
    app.switch_page("pages/compare.py").run()
    app.multiselect[0].set_value(["garbled", "good"]).run()
    assert not app.exception and sorted(app.dataframe[0].value["run"]) == ["garbled", "good"]


def test_a_run_deleted_while_shown_is_said_to_be_gone_and_the_others_are_offered(run_folders):
    older, newer = (run_folder(run_folders / "runs", name, metrics=[record(1)], started=started)
                    for name, started in (("older", 100.0), ("newer", 200.0)))
    app = open_page("pages/train.py")
    shutil.rmtree(newer.path)
    app.run()
    assert not app.exception and "Run newer was deleted" in texts(app)
    assert run_choices(app) == ["older"]
    app.switch_page("pages/compare.py").run()
    app.multiselect[0].set_value(["older"]).run()
    shutil.rmtree(older.path)
    app.run()
    assert not app.exception and "Run older was deleted" in texts(app)
    assert "No runs yet" in texts(app)


def test_keeping_a_run_deleted_since_the_page_showed_it_keeps_nothing(run_folders):
    for name, started in (("older", 100.0), ("newer", 200.0)):  # both stopped, with a checkpoint
        run = run_folder(run_folders / "runs", name, metrics=[record(1)], started=started, checkpoint=b"weights")
        (run.path / runs.STOP_REQUESTED).write_text("")
    app = open_page("pages/train.py")
    assert app.get("download_button") and run_choices(app) == ["newer", "older"]
    shutil.rmtree(run.path)
    app.button(key=keep_button(run)).click().run()
    assert not app.exception and "Run newer was deleted" in texts(app) and run_choices(app) == ["older"]
    assert not (run_folders / "checkpoints").exists()  # not older's checkpoint instead


@pytest.mark.parametrize("page", ["pages/train.py", "pages/compare.py"])
def test_a_run_deleted_while_its_live_view_is_drawn_is_said_to_be_gone(run_folders, monkeypatch, page):
    run = run_folder(run_folders / "runs", "doomed", metrics=[record(1)], comparison="doomed-compare")
    progress = runs.Run.progress

    def deleted_meanwhile(self):  # as if the folder went in the middle of the live view
        shutil.rmtree(self.path, ignore_errors=True)
        return progress(self)

    monkeypatch.setattr(runs.Run, "progress", deleted_meanwhile)
    app = open_page(page)
    if page == "pages/compare.py":  # a lone run is not chosen for you (not a fair pair): choose it
        app.multiselect[0].set_value(["doomed"]).run()
    assert not app.exception and "Run doomed was deleted" in texts(app)
    assert not run.path.exists()



# A run's name as anyone may type it on the command line (a folder name holds anything but "/"): each part would
# format a page's markdown, were it not escaped (app_ui.literal).
ODD_NAME = "**x**[y](e)<b>$x$ `c` ~~s~~ :red[r] _i_ &lt; a\\b"
# A markdown text's parts: a backslash escape (CommonMark shows an escaped ASCII punctuation character as it is),
# what formats Streamlit's markdown where ODD_NAME has it (emphasis, links, HTML, math, code, strikethrough, entities,
# a directive: a colon before a word; a lone backslash escapes what follows), or a plain character.
TOKENS = re.compile(r"(?P<escape>\\[!-/:-@\[-`{-~])|(?P<markup>:(?=\S)|[*_\[\]<$`~&\\])|.", re.DOTALL)


def as_shown(markdown: str) -> tuple[str, str]:
    """The text that Streamlit's markdown shows of `markdown` (which holds no markup of its own), and the markup
    characters in it left unescaped, which would format it."""
    shown, active = "", ""
    for token in TOKENS.finditer(markdown):
        shown += token.group()[-1]
        active += token.group("markup") or ""
    return shown, active


def between(text: str, before: str, after: str) -> str:
    """The part of `text` between the first `before` and the next `after`."""
    start = text.index(before) + len(before)
    return text[start:text.index(after, start)]


def test_a_run_name_and_error_with_markdown_in_them_show_as_they_are_on_the_train_page(run_folders):
    run = run_folder(run_folders / "runs", ODD_NAME, metrics=[record(1), record(2)])  # no process: it failed
    error = "ValueError: **not bold** [no](link) <i>$no math$</i>"
    (run.path / runs.LOG).write_text(f"Traceback (most recent call last):\n{error}\n")
    app = open_page("pages/train.py")
    assert run.status() == runs.FAILED and not app.exception
    assert as_shown(between(progress_text(app), "**", "** · iteration")) == (ODD_NAME, "")
    [failed] = app.error
    assert as_shown(between(failed.value, "Run ", " failed: ")) == (ODD_NAME, "")
    assert as_shown(failed.value.split(" failed: ", 1)[1]) == (error, "")
    [caption] = [caption.value for caption in app.caption if "'s folder" in caption.value]  # Delete's popover
    assert as_shown(between(caption, "Run ", "'s folder")) == (ODD_NAME, "")
    delete = app.button(key="train_delete")
    assert as_shown(delete.label.removeprefix("Delete ")) == (ODD_NAME, "")

    delete.click().run()
    deleted = app.success[0].value
    assert not run.path.exists() and as_shown(deleted.removeprefix("Deleted run ").removesuffix(".")) == (ODD_NAME, "")
    [gone] = [warning.value for warning in app.warning if "was deleted" in warning.value]
    assert as_shown(between(gone, "Run ", " was deleted.")) == (ODD_NAME, "")


def test_a_stop_that_fails_is_one_line_and_the_other_run_stops_all_the_same(run_folders, monkeypatch):
    """runs.stop raises where the queue's lock file is no regular file or a Ray cluster does not answer: Stop's
    callback made that a traceback, and the comparison's other run went on training."""
    sleepers = []
    for name, algorithm in (("maml-a", "maml"), ("fomaml-b", "fomaml")):
        path = run_folders / "runs" / name
        config = Config(iterations=6, algorithm=algorithm)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--run-dir", str(path)])
        sleepers.append(sleeper)
        run_folder(run_folders / "runs", name, comparison="pair", launch=json.dumps(
            {"pid": sleeper.pid, "started": 1.0, "config": config.to_dict(), "comparison": "pair"}))
    stopped, real_stop = [], runs.stop

    def stop(run):
        if run.name == "maml-a":
            raise OSError("[Errno 6] No such device or address: '.start.lock'")
        stopped.append(run.name)
        real_stop(run)

    monkeypatch.setattr(runs, "stop", stop)
    try:
        app = open_page("pages/compare.py")
        app.button(key="compare_stop").click().run()
        assert not app.exception
        assert [toast.value for toast in app.toast] == ["Cannot stop: \\[Errno 6\\] No such device or address: "
                                                        "'.start.lock'"]
        assert stopped == ["fomaml-b"]
        wait_for(lambda: sleepers[1].poll() is not None, "the other run's process to end")  # signalled
        assert sleepers[0].poll() is None
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
