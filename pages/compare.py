"""Compare: MAML and first-order MAML from the same initial weights on the same tasks, side by side."""

import streamlit as st

from fewshot import plots, runs
import app_ui as ui


def curve_labels(selected: list) -> dict:
    """MAML / FOMAML when that tells the runs apart, else with the run's name."""
    algorithms = [run.config().algorithm for run in selected]
    return {(algorithm.upper() if algorithms.count(algorithm) == 1 else f"{algorithm.upper()} {run.name}"): run
            for algorithm, run in zip(algorithms, selected)}


def table_row(summary: dict) -> dict:
    """A run's summary (runs.summary) as the table shows it."""
    def percent(value):
        return None if value is None else round(100 * value, 1)

    test = (f"{100 * summary['test_accuracy']:.1f} ± {100 * summary['test_ci95']:.1f}"
            if summary["test_accuracy"] is not None else None)
    seconds = summary["seconds_per_iteration"]
    return {"run": summary["run"], "algorithm": summary["algorithm"], "status": summary["status"],
            "iterations": summary["iterations"], "s / iteration": None if seconds is None else round(seconds, 3),
            "peak memory (MB)": summary["peak_memory_mb"], "final val accuracy (%)": percent(summary["val_accuracy"]),
            "test accuracy (%, 95 % interval)": test}


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
        st.plotly_chart(plots.probe_curves(records, title=label), key=f"{key}_{label}", width="stretch")


def start_comparison(config) -> str:
    st.session_state.compare_runs = [run.name for run in runs.start_comparison(config)]  # the runs to show
    return f"Started runs {' and '.join(st.session_state.compare_runs)}."


st.title("Compare: MAML and first-order MAML")
st.markdown(r"""
MAML's meta-gradient flows back *through* the inner update $\theta'_i = \theta - \alpha \nabla_\theta
\mathcal{L}_{\mathcal{T}_i}(\theta)$, so it multiplies the query-loss gradient by $I - \alpha
\nabla^2_\theta \mathcal{L}_{\mathcal{T}_i}(\theta)$: a Hessian-vector product per inner step, and the inner
loop's activations kept for the backward pass. **First-order MAML drops that Hessian term** and uses the
query-loss gradient at $\theta'_i$ as it is. It saves time and memory; the question is what it costs in accuracy.
Both runs below start from the same initial weights and see the same sequence of tasks (same seed). They run
at the same time with one CPU thread each, so their seconds per iteration compare fairly.
""")

has_data = ui.dataset_warning()

with st.expander("New comparison", expanded=True):
    preset_name, defaults = ui.preset_picker("compare")
    with st.form("compare_form", border=False):
        ui.config_fields("compare", preset_name, defaults, exclude=("algorithm",))
        ui.start_button("Start MAML and FOMAML", "compare", preset_name, start_comparison, disabled=not has_data,
                        exclude=("algorithm",))
    ui.start_message("compare")

all_runs = runs.list_runs()
by_name = {run.name: run for run in all_runs}
for name in st.session_state.get("compare_runs", []):
    if name not in by_name:  # shown before, listed no more: its folder was deleted
        st.warning(f"Run {name} was deleted.", icon=":material/delete:")
if not all_runs:
    st.info("No runs yet: start a comparison above, or train on the Train page.")
    st.stop()
default = [name for name in st.session_state.get("compare_runs", []) if name in by_name]
default = default or [run.name for run in  # else the last comparison, else the shipped checkpoints' runs
                      runs.latest_comparison(all_runs) or runs.list_runs(runs.shipped_runs_root())]
chosen = st.multiselect("Runs to overlay", list(by_name), default=default,
                        format_func=lambda name: by_name[name].label(),
                        help="Any past or running runs; a new comparison is chosen for you.")
st.session_state.compare_runs = chosen
selected = [by_name[name] for name in chosen]
if not selected:
    st.info("Choose runs to overlay above, or start a comparison.")
    st.stop()
statuses = {run.name: run.status() for run in selected}


@ui.live(refresh=runs.RUNNING in statuses.values())
def live_view():
    try:
        now = {run.name: run.status() for run in selected}
        if runs.RUNNING in now.values() and st.button("Stop the running runs", type="primary", key="compare_stop"):
            for run in selected:
                if now[run.name] == runs.RUNNING:
                    runs.stop(run)
        for run in selected:
            ui.run_status(run, now[run.name])
        series = {label: run.metrics() for label, run in curve_labels(selected).items()}
        ways = {run.config().ways for run in selected}
        ways = ways.pop() if len(ways) == 1 else None  # a chance level only when all runs share it
        st.markdown("**Against meta-iterations**: what each update is worth")
        ui.curves_chart(series, "iterations", ways, key="compare_chart_iterations")
        st.markdown("**Against seconds of training**: what each second is worth")
        ui.curves_chart(series, "seconds", ways, key="compare_chart_seconds")
        probe_view(series, key="compare_probe")
        st.dataframe([table_row(runs.summary(run)) for run in selected], hide_index=True, width="stretch")
    except FileNotFoundError:  # a run's folder was deleted meanwhile: the page, redrawn, says so
        st.rerun()
    if now != statuses:  # a run ended: redraw the page, with or without the timer
        st.rerun()


live_view()
st.caption("s / iteration: median time of a meta-update, validation iterations left out. Peak memory: the "
           "training process' peak resident memory, dataset and libraries included, so the difference between "
           "two runs is what their algorithms need.")
