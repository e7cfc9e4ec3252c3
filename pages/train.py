"""Train: configure a meta-training run, start it, watch its curves live, stop it, keep its checkpoint."""

import streamlit as st

from fewshot import runs
import app_ui as ui


def start_run(config) -> str:
    st.session_state.train_run = runs.start(config).name  # the run to show
    return f"Started run {st.session_state.train_run}."


st.title("Train")
st.caption("Meta-train a model on Omniglot. The run is a process of its own: it goes on when you reload or close "
           "the page, and every browser tab sees it.")

has_data = ui.dataset_warning()
with st.expander("New run", expanded=True):  # constant: a changed expander re-creates its widgets
    preset_name, defaults = ui.preset_picker("train")
    with st.form("train_form", border=False):
        ui.config_fields("train", preset_name, defaults)
        ui.start_button("Start", "train", preset_name, start_run, disabled=not has_data)
    ui.start_message("train")
all_runs = runs.list_runs()  # after Start's callback: with the run it started

names = [run.name for run in all_runs]
chosen = st.session_state.get("train_run")
if chosen and chosen not in names:  # shown before, listed no more: its folder was deleted
    st.warning(f"Run {chosen} was deleted.", icon=":material/delete:")
if not all_runs:
    st.info("No runs yet: pick a preset and press Start." if has_data else "No runs yet.")
    st.stop()

running = [run.name for run in all_runs if run.is_running()]
default = chosen if chosen in names else (running[0] if running else names[0])
labels = {run.name: run.label() for run in all_runs}
name = st.selectbox("Run", names, index=names.index(default), format_func=labels.get,
                    help="Every run under the runs folder, newest first; running runs go on in the background.")
st.session_state.train_run = name
run = all_runs[names.index(name)]
x = ui.x_axis_choice("train_x")
status = run.status()


@ui.live(refresh=status == runs.RUNNING)
def live_view():
    try:
        now = run.status()
        if now == runs.RUNNING and st.button("Stop training", type="primary", key="train_stop",
                                             help="Finishes the current iteration, saves the checkpoint and ends."):
            runs.stop(run)
        ui.run_status(run, now)
        ui.curves_chart({"": run.metrics()}, x, run.config().ways, key="train_chart")
    except FileNotFoundError:  # the run's folder was deleted meanwhile: the page, redrawn, says so
        st.rerun()
    if now != status:  # it ended (or was restarted): redraw the page, with or without the timer
        st.rerun()


live_view()

if status in (runs.FINISHED, runs.STOPPED) and run.checkpoint.exists():
    evaluation = run.evaluation()
    if evaluation:
        st.metric(f"Test accuracy ({evaluation['split']}, {evaluation['ways']}-way {evaluation['shots']}-shot)",
                  f"{100 * evaluation['accuracy']:.1f} % ± {100 * evaluation['ci95']:.1f} %",
                  help=f"Mean over {evaluation['tasks']} tasks of unseen characters after "
                       f"{evaluation['inner_steps']} inner steps, with its 95 % confidence interval.")
    elif status == runs.STOPPED:
        st.caption("Stopped before the end, so not evaluated on the test characters.")
    keep, download = st.columns([3, 1], vertical_alignment="bottom")
    with keep:
        with st.form(f"keep_{run.name}", border=False):  # a click meant for a run deleted since is dropped
            checkpoint_name = st.text_input("Name for the Draw page", value=run.name)
            if st.form_submit_button("Keep checkpoint for the Draw page"):
                try:
                    kept = runs.keep_checkpoint(run, checkpoint_name)
                    st.success(f"Kept as {kept.name} in {kept.parent}; the Draw page lists it.")
                except (ValueError, OSError) as error:
                    st.error(str(error))
    with download:
        try:
            checkpoint = run.checkpoint.read_bytes()
        except FileNotFoundError:  # deleted since the page listed the run: redrawn, the page says so
            st.rerun()
        st.download_button("Download checkpoint", data=checkpoint, file_name=f"{run.name}.safetensors",
                           mime="application/octet-stream")
