"""Compare: MAML and first-order MAML from the same initial weights on the same tasks, side by side.

The runs shown come first, with a one-line takeaway and their curves in the first screen; the form follows."""

import streamlit as st

from fewshot import plots, runs
import app_ui as ui

MENU = "compare_runs_menu"  # the run menu's key: the runs to show, or any texts a tampered browser sends
SHOWN = "compare_runs_shown"  # the runs this session's page showed last: the only ones it may say were deleted
MAX_OVERLAID = 6  # runs shown at once: each adds its curves to every chart, and a row and a bar, at every redraw
MISSING = "—"


def curve_labels(selected: list) -> dict:
    """MAML / FOMAML when that tells the runs apart, else with the run's name."""
    algorithms = [run.config().algorithm for run in selected]
    return {(algorithm.upper() if algorithms.count(algorithm) == 1 else f"{algorithm.upper()} {run.name}"): run
            for algorithm, run in zip(algorithms, selected)}


def table_row(summary: dict) -> dict:
    """A run's summary (runs.summary) as the table shows it: text, a dash where there is no figure."""
    def shown(value, text, scale=1):
        return MISSING if value is None else text.format(scale * value)

    test = (f"{100 * summary['test_accuracy']:.1f} ± {100 * summary['test_ci95']:.1f}"
            if summary["test_accuracy"] is not None else MISSING)
    return {"run": summary["run"], "status": summary["status"], "iterations": f"{summary['iterations']:,}",
            "s / it": shown(summary["seconds_per_iteration"], "{:.3f}"),
            "memory MB": shown(summary["training_memory_mb"], "{:.0f}"),
            "val %": shown(summary["val_accuracy"], "{:.1f}", scale=100),
            "test %": test}


TABLE_HELP = {
    "s / it": "Median seconds of a meta-update, validation iterations left out.",
    "memory MB": "The training's own memory: the process' peak resident memory above what it held before its first "
                 "meta-update (dataset, model, libraries). A dash: recorded before this was measured.",
    "val %": "The last validation accuracy.",
    "test %": "Test accuracy with its 95 % interval, once the run has finished (or been evaluated).",
}


def probe_view(series: dict, key: str) -> None:
    """The first- against second-order measurements of each run that has some, or how to get them."""
    probed = {label: records for label, records in series.items() if any("probe" in r for r in records)}
    st.markdown("**First against second order**, measured on the tasks MAML trains on")
    if not probed:
        st.caption("No measurements in these runs: a MAML run records them every probe_every iterations "
                   "(under Monitoring and engine in the form; --probe-every on the command line).")
        return
    st.markdown(r"""
$g_2$ is MAML's meta-gradient, the one its update uses; $g_1$ is first-order MAML's on the same tasks, the Hessian
term dropped. **A cosine near 1 means that first order points where MAML points**, so dropping the Hessian
costs little; when the cosine falls, or the dropped term $|g_2 - g_1|$ nears $|g_2|$ (dashed), the second-order
term steers MAML's update and first order would step elsewhere.
""")
    for label, records in probed.items():
        st.markdown(f"**{ui.literal(label)}**")
        for column, measure in zip(st.columns(len(plots.PROBE_PANELS)), plots.PROBE_PANELS):
            spec, rows = plots.probe_curves(records, measure)
            with column:
                ui.vega_chart(rows, spec, key=f"{key}_{label}_{measure}")


def start_comparison(config) -> str:
    started = runs.start_comparison(config, owner=ui.session_id())
    st.session_state[MENU] = [run.name for run in started]  # the runs to show
    return ui.started_message(started)


def chosen_runs(all_runs: list) -> list:
    """The run menu, when there are runs; returns the runs chosen. At first, the newest fair pair
    (runs.fair_pair), or none."""
    by_name = {run.name: run for run in all_runs}
    ui.run_names_kept(MENU)
    if MENU not in st.session_state:
        st.session_state[MENU] = [run.name for run in runs.fair_pair(all_runs)]
    for name in st.session_state.get(SHOWN, []):
        if name not in by_name:  # shown before, listed no more: its folder was deleted
            st.warning(f"Run {ui.literal(name)} was deleted.", icon=":material/delete:")
    # the runs chosen, as the menu allows them (the browser may send any list): listed ones, each once,
    # MAX_OVERLAID at most
    listed = [name for name in st.session_state[MENU] if name in by_name]
    kept = list(dict.fromkeys(listed))[:MAX_OVERLAID]
    if kept != st.session_state[MENU]:
        st.session_state[MENU] = kept
    st.session_state[SHOWN] = kept
    if not all_runs:
        return []
    chosen = st.multiselect("Runs to overlay", list(by_name), format_func=lambda name: by_name[name].label(),
                            key=MENU, persist_state="session", max_selections=MAX_OVERLAID,
                            help="Any past or running runs (● running); a new comparison is chosen for you.")
    return [by_name[name] for name in chosen]


def comparison_view(selected: list) -> None:
    """The chosen runs' progress, takeaway, curves, first- against second-order measurements and table."""
    statuses = {run.name: run.status() for run in selected}
    pair = runs.maml_and_fomaml(selected)
    if pair and runs.differences(*pair):
        st.warning("These runs differ in more than the algorithm (" + "; ".join(runs.differences(*pair)) +
                   "): the gap below is not the algorithms' alone.", icon=":material/balance:")

    @ui.live(refresh=bool({runs.RUNNING, runs.QUEUED} & set(statuses.values())), every=2.0)
    def live_view():
        try:
            now = {run.name: run.status() for run in selected}
            active = [run for run in selected if now[run.name] in (runs.RUNNING, runs.QUEUED)]
            resumable = [run for run in selected if now[run.name] in (runs.STOPPED, runs.INTERRUPTED)]
            progress, stop = st.columns([5, 2], vertical_alignment="center")
            with progress:
                for run in selected:
                    ui.run_status(run, now[run.name])
            with stop:
                if active:
                    label = "Stop both runs" if len(active) == 2 else "Stop the run"
                    ui.stop_button(active, key="compare_stop", label=label)
                for run in resumable:
                    ui.resume_button(run, "compare", label=f"Resume {run.config().algorithm.upper()}")
            line = runs.takeaway(*pair) if pair else None
            st.markdown(f"**{line}**" if line else "**Takeaway**: once MAML and FOMAML runs have records, "
                        "what second order costs and buys, in one line.")
            series = {label: run.metrics() for label, run in curve_labels(selected).items()}
            ways = {run.config().ways for run in selected}
            ways = ways.pop() if len(ways) == 1 else None  # a chance level only when all runs share it
            st.markdown("**Against meta-iterations**: what each update is worth")
            ui.curves_chart(series, "iterations", ways, key="compare_chart_iterations", height=320)
            st.markdown("**Against seconds of training**: what each second is worth")
            ui.curves_chart(series, "seconds", ways, key="compare_chart_seconds", height=320)
            st.dataframe([table_row(runs.summary(run)) for run in selected], hide_index=True, width="stretch",
                         column_config={name: st.column_config.TextColumn(name, help=text)
                                        for name, text in TABLE_HELP.items()})
            probe_view(series, key="compare_probe")
        except FileNotFoundError:  # a run's folder was deleted meanwhile: the page, redrawn, says so
            st.rerun()
        if now != statuses:  # a run ended: redraw the page, with or without the timer
            st.rerun()

    live_view()


st.title("MAML and FOMAML")
ui.runs_page()
ui.start_message("compare")
has_data = ui.dataset_warning()
all_runs = runs.list_runs()
selected = chosen_runs(all_runs)
if selected:
    comparison_view(selected)
elif all_runs:
    st.info("Choose runs to overlay above, or start a comparison below. None is chosen for you unless a MAML "
            "and a FOMAML run were trained alike (same settings and iterations): runs trained unequally, "
            "side by side, would pass their difference for the algorithms'.")
else:
    st.info("No runs yet: start a comparison below, or train on the Train page.")

st.markdown(r"""
MAML's meta-gradient flows back *through* the inner update $\theta'_i = \theta - \alpha \nabla_\theta
\mathcal{L}_{\mathcal{T}_i}(\theta)$, so it multiplies the query-loss gradient by $I - \alpha
\nabla^2_\theta \mathcal{L}_{\mathcal{T}_i}(\theta)$: a Hessian-vector product per inner step, and the inner
loop's activations kept for the backward pass. **First-order MAML drops that Hessian term** and uses the
query-loss gradient at $\theta'_i$ as it is. It saves time and memory; the question is what it costs in accuracy.
Both runs of a comparison start from the same initial weights and see the same sequence of tasks (same seed). They
run at the same time with one CPU thread each, so their seconds per iteration compare fairly.
""")

with ui.form_expander("New comparison", "compare"):
    preset_name, defaults = ui.preset_picker("compare")
    with st.form("compare_form", border=False):
        ui.config_fields("compare", preset_name, defaults, exclude=("algorithm",))
        ui.concurrent_note(all_runs)
        ui.start_button("Start MAML and FOMAML", "compare", preset_name, start_comparison, disabled=not has_data,
                        exclude=("algorithm",))
