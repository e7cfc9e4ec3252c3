"""Streamlit pieces shared by the pages (pages/): the configuration form, a run's status, progress and curves,
and Omniglot loaded once per server. It lives outside pages/ so that Streamlit never mistakes it for a page."""

import re
import secrets
import threading

import pandas
import pyarrow
import streamlit as st

from fewshot import access, desks, limits, runs
from fewshot.config import FIELDS, Config
from fewshot.omniglot import Omniglot, load_omniglot
from fewshot.plots import X_AXES, training_curves
from fewshot.presets import ABOUT, PRESETS, preset

FORM_GROUPS = {
    "What is learned": ("algorithm", "backbone", "channels", "blocks"),
    "Tasks": ("ways", "shots", "queries", "split", "augment"),
    "Inner loop": ("inner_steps", "inner_lr", "seed"),
    "Outer loop": ("outer_lr", "meta_batch", "iterations"),
}
ADVANCED = ("val_every", "val_tasks", "checkpoint_every", "test_tasks", "test_inner_steps", "probe_every", "engine",
            "tasks_at_once", "device")
MAML_PLUS_PLUS = ("multi_step_loss", "cosine_annealing", "second_order_from", "learned_inner_lr", "per_step_bn")
FORM_FIELDS = [name for names in FORM_GROUPS.values() for name in names] + list(ADVANCED) + list(MAML_PLUS_PLUS)
FLOAT_STEPS = {"inner_lr": 0.05, "outer_lr": 0.0005}
STATUS_ICONS = {runs.FINISHED: "check_circle", runs.STOPPED: "stop_circle", runs.FAILED: "error",
                runs.INTERRUPTED: "power_off", runs.QUEUED: "hourglass_top"}  # Material icons
NEEDS_KEY = "Needs the instructor key (in the sidebar)."
# What would format a text in Streamlit's markdown wherever it stands in a line: emphasis, code, links and
# footnotes, HTML, math, strikethrough, entities, directives (:red[...]); an underscore only where it is not
# between two letters or digits (FEWSHOT_MAX_RUNS stays as it is: it emphasizes nothing).
MARKDOWN_SYNTAX = re.compile(r"[\\`*\[\]<$~&]|:(?=\S)|(?<![^\W_])_|_(?![^\W_])")


@st.cache_resource
def queue_dispatcher(root: str) -> threading.Thread:
    """The server's one thread that starts queued runs when a place frees (runs.dispatch_forever), one per
    runs folder; app.py asks for it on every page, so it runs from the server's first visitor on (and
    runs_page, for a first visit straight to a page, which a fresh server serves without app.py)."""
    thread = threading.Thread(target=runs.dispatch_forever, args=(root,), name="fewshot-queue", daemon=True)
    thread.start()
    return thread


def session_id() -> str:
    """This browser session's id, which the runs it starts record as their owner."""
    return st.session_state.setdefault("session_id", secrets.token_hex(8))


def has_key() -> bool:
    """Whether this session entered the instructor key."""
    return st.session_state.get("instructor", False)


def may_manage() -> bool:
    """Whether this session may start, resume and delete runs and keep checkpoints (fewshot/access.py)."""
    return access.may_manage(has_key())


def settings_checked() -> None:
    """Where this server's environment holds a bad FEWSHOT_* setting (fewshot/limits.py, fewshot/access.py): says
    so, one line each, and stops the page, so that no page runs with it and none meets it as a traceback.
    app.py asks for it before every page."""
    problems = limits.setting_problems()
    try:
        access.instructor_key()
    except ValueError as error:
        problems.append(str(error))
    for problem in problems:
        st.error(f"{problem}. The server's environment needs fixing: the instructor sets it right and restarts "
                 "the server.", icon=":material/settings:")
    if problems:
        st.stop()


def literal(text: str) -> str:
    """`text` as markdown that shows it as it is, on one line. For a run's name (a folder name, typed by anyone
    on the command line) and the errors that name one, wherever they go into markdown: a page's text, a
    message, a progress bar's or a button's label. (An emoji code such as :smile: still shows the emoji, and a
    web address is still a link, showing the address.)"""
    return MARKDOWN_SYNTAX.sub(r"\\\g<0>", " ".join(text.splitlines()))


def tab_desk() -> str:
    """This browser tab's desk (fewshot/desks.py), under which the Draw page keeps its drawings and the Challenge
    page its game, over a reload or a restarted server: the URL's at the session's start, where it names one, else a
    new one; kept for the session (a switch of page leaves the URL's parameters behind), and put back in the URL,
    for a reload to send."""
    if "desk" not in st.session_state:
        desk = st.query_params.get("desk")  # from the URL: anything
        st.session_state.desk = desk if desks.is_desk(desk) else desks.new_desk()
    if st.query_params.get("desk") != st.session_state.desk:  # a new desk, or the URL of another page's link
        st.query_params["desk"] = st.session_state.desk
    return st.session_state.desk


def runs_page() -> None:
    """What the pages that start and stop runs (Train, Compare) need first: settings that work, the queue's
    dispatcher, and the instructor key's field. They ask for these themselves: until some visitor's page has run
    app.py, a fresh Streamlit server serves a page's file alone (its legacy pages/ mode)."""
    settings_checked()
    queue_dispatcher(str(runs.runs_root()))
    instructor_sidebar()


def instructor_sidebar() -> None:
    """Where FEWSHOT_INSTRUCTOR_KEY is set: the key's field in the sidebar, or that it was entered."""
    if access.instructor_key() is None:
        return
    with st.sidebar:
        if has_key():
            st.caption(":material/lock_open: Instructor: you may start, stop, resume and delete runs.")
            return
        with st.form("instructor_form", border=False):
            st.text_input("Instructor key", type="password", key="instructor_entered", max_chars=access.MAX_KEY_CHARS,
                          help="Starting, resuming and deleting runs and keeping checkpoints need it. Everyone "
                               "may watch runs, draw and play.")
            st.form_submit_button("Unlock", on_click=_check_key)
        if st.session_state.pop("instructor_wrong", False):
            st.error("That is not the instructor key.", icon=":material/key_off:")


def _check_key() -> None:
    if access.check_key(st.session_state.get("instructor_entered", "")):
        st.session_state["instructor"] = True
    else:
        st.session_state["instructor_wrong"] = True
    st.session_state["instructor_entered"] = ""


@st.cache_resource(show_spinner="Loading Omniglot ...")
def omniglot(data_root: str) -> Omniglot:
    """Omniglot from `data_root`, read once for every page and every browser session of this server (about
    100 MB of drawings)."""
    return load_omniglot(data_root, download=False)


def dataset_warning() -> bool:
    """Shows how to get Omniglot when it is missing; returns whether it is there."""
    message = runs.missing_dataset_help(Config().data_root)
    if message:
        st.warning(message, icon=":material/folder_off:")
    return message is None


def preset_picker(prefix: str) -> tuple[str, Config]:
    """A preset menu; returns the preset's name and Config, the defaults of config_fields."""
    name = st.selectbox("Preset", list(PRESETS), key=f"{prefix}_preset", persist_state="session",
                        help="Fills the form below; change any field before pressing Start.")
    st.caption(ABOUT[name])
    return name, preset(name)


def config_fields(prefix: str, preset_name: str, defaults: Config, exclude: tuple = ()) -> None:
    """The Config fields as widgets, inside a form, starting from `defaults` (make_config reads them).

    The widgets' keys hold the preset's name, so choosing another preset gives fresh widgets with its values.
    They keep their values while another page is shown.
    """
    for column, (group, names) in zip(st.columns(len(FORM_GROUPS)), FORM_GROUPS.items()):
        with column:
            st.markdown(f"**{group}**")
            for name in names:
                if name not in exclude:
                    _field_widget(_widget_key(prefix, preset_name, name), name, getattr(defaults, name))
    for label, names in (("Monitoring and engine", ADVANCED), ("MAML++ options", MAML_PLUS_PLUS)):
        with st.expander(label):
            columns = st.columns(3)
            for index, name in enumerate(n for n in names if n not in exclude):
                with columns[index % 3]:
                    _field_widget(_widget_key(prefix, preset_name, name), name, getattr(defaults, name))


def make_config(prefix: str, preset_name: str, exclude: tuple = ()) -> Config:
    """A Config from the values of config_fields' widgets; ValueError when they do not make one."""
    return Config(**{name: st.session_state[_widget_key(prefix, preset_name, name)]
                     for name in FORM_FIELDS if name not in exclude})


def form_expander(label: str, prefix: str):
    """The expander that holds a page's form. A successful Start closes it (_start_pressed), so that the page
    shrinks to the run it started, shown above it; clicking its label opens it again."""
    return st.expander(label, expanded=True, key=f"{prefix}_form_open", on_change="rerun")


def concurrent_note(all_runs: list) -> None:
    """A note inside the form, above Start, when runs are training or waiting already."""
    statuses = [run.status() for run in all_runs]
    running, queued, limit = statuses.count(runs.RUNNING), statuses.count(runs.QUEUED), limits.max_runs()
    if running + queued >= limit:
        waiting = f", {queued} waiting" if queued else ""
        st.info(f"{running} {'run' if running == 1 else 'runs'} training{waiting}; this server trains {limit} at once. Start queues the new run: "
                "it starts by itself when a place frees.", icon=":material/hourglass_top:")
    elif running:
        st.warning(f"{running} {'run' if running == 1 else 'runs'} training now. Start adds a run beside them: "
                   f"they share this server's cores (at most {limit} at once).", icon=":material/warning:")


def start_button(label: str, prefix: str, preset_name: str, start, disabled: bool, exclude: tuple = ()) -> None:
    """The form's submit button. Pressed, it makes a Config of the form's values and calls `start(config)`,
    which starts runs and returns what to say, or raises ValueError saying why not; start_message shows it.

    This happens in the button's callback, which Streamlit runs first thing on the rerun that the press
    causes. Code after `if st.form_submit_button(...)` would not run when the next press, or any rerun,
    interrupts the script before it: of ten presses 0.3 s apart, eight were lost without a word.
    """
    allowed = may_manage()
    st.form_submit_button(label, type="primary", disabled=disabled or not allowed, on_click=_start_pressed,
                          args=(prefix, preset_name, start, exclude), help=None if allowed else NEEDS_KEY)


def start_message(prefix: str) -> None:
    """What the last press of the Start button (or of Evaluate now) did, shown once."""
    kind, text = st.session_state.pop(f"{prefix}_start_message", (None, None))
    if kind == "error":
        st.error(text, icon=":material/block:")
    elif kind == "success":
        st.success(text, icon=":material/play_circle:")
        st.toast(text, icon=":material/play_circle:")  # seen wherever the page is scrolled


def _start_pressed(prefix: str, preset_name: str, start, exclude: tuple) -> None:
    try:
        if not may_manage():  # the button is disabled then; a press sent anyway is refused here
            raise ValueError(NEEDS_KEY)
        message = ("success", start(make_config(prefix, preset_name, exclude)))
        st.session_state[f"{prefix}_form_open"] = False  # the run, above the form, in view
    except (ValueError, OSError) as error:  # OSError: the runs folder cannot be written
        message = ("error", cannot("start", error))
    st.session_state[f"{prefix}_start_message"] = message


def cannot(what: str, error: Exception) -> str:
    """'Cannot start: ...', the problems that the error names (limits' come one a line) in a list when several."""
    problems = [literal(problem) for problem in str(error).splitlines()]
    return (f"Cannot {what}: {problems[0]}" if len(problems) == 1 else
            f"Cannot {what}:\n" + "\n".join(f"- {problem}" for problem in problems))


def started_message(started: list) -> str:
    """What Start did: the runs it started, or queued with their place."""
    names = " and ".join(literal(run.name) for run in started)
    if started[0].status() != runs.QUEUED:
        return f"Started {'run' if len(started) == 1 else 'runs'} {names}: progress and curves are below."
    ahead = runs.queue_place(started[0])
    return (f"Queued {names}: {ahead} {'run' if ahead == 1 else 'runs'} ahead. This server trains "
            f"{limits.max_runs()} at once; {'it starts' if len(started) == 1 else 'they start'} by itself when a "
            "place frees.")


def stop_button(running: list, key: str, label: str = "Stop") -> None:
    """Stops the `running` runs (those this session may stop). The press stops them in its callback, first thing
    in the rerun it causes, so the button shows "Stopping ..." (disabled) at once, before anything else is drawn."""
    allowed = all(access.may_stop(run.owner(), session_id(), has_key()) for run in running)
    stopping = all((run.path / runs.STOP_REQUESTED).exists() for run in running)
    st.button("Stopping ..." if stopping else label, key=key, type="primary", disabled=stopping or not allowed,
              on_click=_stop, args=(running,),
              help="Each run finishes its iteration, saves its checkpoint and ends." if allowed else
              "Needs the instructor key (in the sidebar), or to have started the run in this browser tab.")


def _stop(running: list) -> None:
    for run in running:
        if access.may_stop(run.owner(), session_id(), has_key()):
            try:
                runs.stop(run)
            except (OSError, RuntimeError, ValueError) as error:  # the queue's lock file cannot be opened (no
                # regular file), a Ray cluster that does not answer: said, and the other runs stopped all the same
                st.toast(cannot("stop", error), icon=":material/error:")


def resume_button(run: runs.Run, prefix: str, label: str = "Resume") -> None:
    """Resume, for a stopped or interrupted run: it continues from its last saved iteration, through the queue.
    What happened shows as the page's start_message(prefix)."""
    st.button(label, key=f"{prefix}_resume_{run.name}", on_click=_resume, args=(run, prefix),
              disabled=not may_manage(), icon=":material/replay:",
              help="Continues from the last saved iteration; waits in the queue if the server is full."
              if may_manage() else NEEDS_KEY)


def _resume(run: runs.Run, prefix: str) -> None:
    def resume() -> str:
        runs.resume(run)
        return (f"Resuming run {literal(run.name)}." if run.status() != runs.QUEUED else
                f"Run {literal(run.name)} waits for a place: {runs.queue_place(run)} runs ahead.")
    managing(prefix, "resume", resume)


def managing(prefix: str, verb: str, action) -> None:
    """`action()`, which changes runs and returns what to say, for a session that may manage them (the button
    is disabled otherwise; a press sent anyway is refused here). The page's start_message(prefix) says what it
    did, or why it could not `verb`."""
    try:
        if not may_manage():
            raise ValueError(NEEDS_KEY)
        message = ("success", action())
    except (ValueError, OSError) as error:
        message = ("error", cannot(verb, error))
    st.session_state[f"{prefix}_start_message"] = message


def run_status(run: runs.Run, status: str) -> None:
    """A progress bar that says what the run is doing: its phase, pace and time left while running; below it,
    how many lines of its metrics could not be read, and the error of a failed run."""
    progress = run.progress()
    parts = [f"**{literal(run.name)}**", f"iteration {progress.iteration} / {progress.iterations}"]
    if status == runs.QUEUED:
        ahead = runs.queue_place(run)
        parts.append(f":material/{STATUS_ICONS[status]}: queued, {ahead} {'run' if ahead == 1 else 'runs'} ahead: "
                     "starts by itself when a place frees")
    elif status != runs.RUNNING:
        parts.append(f":material/{STATUS_ICONS[status]}: {status}")
    elif (run.path / runs.STOP_REQUESTED).exists():
        parts.append("stopping: finishing this iteration and saving ...")
    elif progress.iteration == 0:
        parts.append("starting: loading Omniglot and building the model ...")
    elif progress.iteration >= progress.iterations:
        parts.append(f"meta-training done: measuring test accuracy on {run.config().test_tasks} tasks ...")
    else:
        parts.append(f"{progress.tasks_per_second:.0f} tasks/s" if progress.tasks_per_second else "running")
        if progress.seconds_left is not None:
            parts.append(f"{_duration(progress.seconds_left)} left")
    st.progress(min(progress.iteration / progress.iterations, 1.0), text=" · ".join(parts))
    skipped = run.unreadable_lines()
    if skipped:
        st.caption(f"{skipped} unreadable {'line' if skipped == 1 else 'lines'} in {runs.METRICS} skipped.")
    if status == runs.FAILED:
        st.error(f"Run {literal(run.name)} failed: {literal(run.error() or 'it ended without a word (killed?)')}",
                 icon=":material/error:")
    if status == runs.QUEUED and run.launch().get("launch_error"):
        st.caption(f"Could not start it yet: {literal(run.launch()['launch_error'])}. The server tries again every few "
                   "seconds.")
    if status == runs.INTERRUPTED:
        st.warning(f"Run {literal(run.name)} was interrupted: its process ended without a word (the server or the "
                   "machine restarted, or it was killed). Resume continues it from its last saved iteration.",
                   icon=":material/power_off:")


def run_names_kept(key: str) -> None:
    """Puts back the run names that a run menu (key `key`) holds, where it holds a run's label instead.

    A run's label (Run.label) changes when the run starts or ends, while the menu, drawn outside the live part
    of the page, still shows the old one. The browser sends back the label it shows, and Streamlit takes a
    label that matches no option for the choice itself (its selectbox's and multiselect's deserialize): the
    page would then say the run was deleted. Every label begins with the run's name, then " · "."""
    value = st.session_state.get(key)
    if isinstance(value, str):
        st.session_state[key] = value.split(" · ")[0]
    elif isinstance(value, list):
        st.session_state[key] = [choice.split(" · ")[0] for choice in value]


def x_axis_choice(key: str) -> str:
    return st.radio("x axis", list(X_AXES), horizontal=True, key=key)


def curves_chart(series: dict, x: str, ways: int | None, key: str, height: int = 300) -> None:
    """The runs' loss and accuracy, side by side. Each chart keeps its key and spec from one redraw to the next
    (plots.training_curves), so the browser updates it in place: no blank frame while runs train."""
    for column, metric in zip(st.columns(2), ("loss", "accuracy")):
        spec, rows = training_curves(series, metric, x, chance=1 / ways if ways and metric == "accuracy" else None,
                                     height=height)
        with column:
            vega_chart(rows, spec, key=f"{key}_{metric}")


def vega_chart(rows: list, spec: dict, key: str) -> None:
    """A Vega-Lite chart of `rows` (dicts), as wide as its column, its rows sent compactly: every viewer of a
    live chart gets them all at every redraw. Text columns (a run's label, a curve's name) become categories,
    each name sent once and then a byte a row, where it went whole on every row (two thirds of a training
    chart's bytes); whole numbers (iterations) take the fewest bytes that hold them all, not 8; pandas'
    description of the table is left out. Measures keep their 8 bytes: the chart draws them as they are."""
    table = pandas.DataFrame(rows)
    for name, column in table.items():
        if pandas.api.types.is_string_dtype(column):
            table[name] = column.astype("category")
        elif pandas.api.types.is_integer_dtype(column):
            table[name] = pandas.to_numeric(column, downcast="integer")
    arrow = pyarrow.Table.from_pandas(table, preserve_index=False).replace_schema_metadata()
    st.vega_lite_chart(arrow, spec, key=key, width="stretch")


def live(refresh: bool, every: float = 1.0):
    """st.fragment redrawn every `every` seconds while `refresh` (some run is running), else drawn once."""
    return st.fragment(run_every=every if refresh else None)


def _widget_key(prefix: str, preset_name: str, name: str) -> str:
    return f"{prefix}_{preset_name}_{name}"


def field_label(name: str) -> str:
    """The form's label of a Config field: plain words tied to the paper's symbols (config.py), else its name."""
    return FIELDS[name].metadata["label"] or name.replace("_", " ")


def field_help(name: str) -> str:
    """The field's help, with the name that the command line and config.json use."""
    return f"{FIELDS[name].metadata['help']}. Option `{name}` (`--{name.replace('_', '-')}` on the command line)."


def _field_widget(key: str, name: str, default) -> None:
    field = FIELDS[name]
    label, kept = field_label(name), {"key": key, "persist_state": "session", "help": field_help(name)}
    if field.metadata.get("choices"):
        choices = field.metadata["choices"]
        st.selectbox(label, choices, index=choices.index(default), **kept)
    elif isinstance(field.default, bool):
        st.checkbox(label, value=default, **kept)
    elif isinstance(field.default, int):
        maximum = limits.maximum(name)  # this server's (fewshot/limits.py)
        value = default if maximum is None else min(default, maximum)  # a preset over a limit an instructor lowered
        st.number_input(label, min_value=field.metadata["at_least"] or 0, max_value=maximum, value=value, step=1,
                        **kept)
    else:
        st.number_input(label, min_value=0.0, value=float(default), step=FLOAT_STEPS.get(name, 0.01), format="%g",
                        **kept)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
