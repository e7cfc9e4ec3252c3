"""Train: configure a meta-training run, start it, watch its curves live, stop it, keep its checkpoint.

The run shown comes first, its progress and curves in the first screen; the form follows, and closes on Start."""

import streamlit as st

from fewshot import runs
import app_ui as ui

MENU = "train_run_menu"  # the run menu's key: the run to show, or any text a tampered browser sends
SHOWN = "train_run_shown"  # the run this session's page showed last: the only one it may say was deleted
KEPT_NAME_CHARS = 100  # a usable name has at most 64 (runs.CHECKPOINT_NAME), and ".safetensors" may follow


def start_run(config) -> str:
    run = runs.start(config, owner=ui.session_id())
    st.session_state[MENU] = run.name  # the run to show
    return ui.started_message([run])


def evaluate_pressed(run: runs.Run) -> None:
    def evaluate() -> str:
        runs.evaluate_now(run)
        return f"Measuring run {ui.literal(run.name)}'s test accuracy on {run.config().test_tasks} tasks."
    ui.managing("train", "evaluate", evaluate)


def run_view(all_runs: list) -> None:
    """The run menu, the chosen run's progress and curves (live while it runs), and what a run that ended offers."""
    names = [run.name for run in all_runs]
    if st.session_state.get(MENU) not in names:
        running = [run.name for run in all_runs if run.is_running()]
        st.session_state[MENU] = running[0] if running else names[0]
    labels = {run.name: run.label() for run in all_runs}
    menu, axis = st.columns([3, 2], vertical_alignment="bottom")
    with menu:
        name = st.selectbox("Run", names, format_func=labels.get, key=MENU, persist_state="session",
                            help="Every run under the runs folder, newest first; ● running ones go on in the "
                                 "background.")
    st.session_state[SHOWN] = name
    with axis:
        x = ui.x_axis_choice("train_x")
    run = all_runs[names.index(name)]
    status = run.status()

    @ui.live(refresh=status in (runs.RUNNING, runs.QUEUED))
    def live_view():
        try:
            now = run.status()
            progress, stop = st.columns([5, 2], vertical_alignment="center")
            with progress:  # first: when the button says "Stopping ...", the progress already says it too
                ui.run_status(run, now)
            with stop:
                if now == runs.RUNNING:
                    ui.stop_button([run], key="train_stop", label="Stop training")
                elif now == runs.QUEUED:
                    ui.stop_button([run], key="train_stop", label="Leave the queue")
                elif now in (runs.STOPPED, runs.INTERRUPTED):
                    ui.resume_button(run, "train")
            ui.curves_chart({"": run.metrics()}, x, run.config().ways, key="train_chart")
        except FileNotFoundError:  # the run's folder was deleted meanwhile: the page, redrawn, says so
            st.rerun()
        if now != status:  # it ended (or was restarted): redraw the page, with or without the timer
            st.rerun()

    live_view()
    if status in (runs.FINISHED, runs.STOPPED) and run.checkpoint.exists():
        ended_run(run, status)
    if status not in (runs.RUNNING, runs.QUEUED) and not runs.is_shipped(run):
        delete_button(run)


def delete_button(run: runs.Run) -> None:
    """Delete, behind a popover that asks once more: the run's folder goes, its records and checkpoint too."""
    with st.popover("Delete run", icon=":material/delete:", disabled=not ui.may_manage(),
                    help=None if ui.may_manage() else ui.NEEDS_KEY):
        st.caption(f"Run {ui.literal(run.name)}'s folder, its curves and its checkpoint go for good (a checkpoint "
                   "kept for the Draw page stays).")
        st.button(f"Delete {ui.literal(run.name)}", key="train_delete", type="primary", on_click=delete_pressed,
                  args=(run,), disabled=not ui.may_manage())


def delete_pressed(run: runs.Run) -> None:
    def delete() -> str:
        runs.delete(run)
        return f"Deleted run {ui.literal(run.name)}."
    ui.managing("train", "delete", delete)


def ended_run(run: runs.Run, status: str) -> None:
    """A finished or stopped run: its test accuracy (or Evaluate now), keeping and downloading its checkpoint."""
    evaluation = run.evaluation()
    if evaluation:
        st.metric(f"Test accuracy ({evaluation['split']}, {evaluation['ways']}-way {evaluation['shots']}-shot)",
                  f"{100 * evaluation['accuracy']:.1f} % ± {100 * evaluation['ci95']:.1f} %",
                  help=f"Mean over {evaluation['tasks']} tasks of unseen characters after "
                       f"{evaluation['inner_steps']} inner steps, with its 95 % confidence interval.")
    elif status == runs.STOPPED:
        note, button = st.columns([3, 1], vertical_alignment="center")
        with note:
            st.caption(f"Stopped before the end, so not yet evaluated on the test characters. Evaluate now measures "
                       f"its last checkpoint on {run.config().test_tasks} test tasks, in the background.")
        with button:
            st.button("Evaluate now", key="train_evaluate", on_click=evaluate_pressed, args=(run,),
                      icon=":material/fact_check:", disabled=not ui.may_manage())
    keep, download = st.columns([3, 1], vertical_alignment="bottom")
    with keep:
        with st.form(f"keep_{run.name}", border=False):  # a click meant for a run deleted since is dropped
            checkpoint_name = st.text_input("Name for the Draw page", value=run.name, max_chars=KEPT_NAME_CHARS)
            if st.form_submit_button("Keep checkpoint for the Draw page", disabled=not ui.may_manage(),
                                     help=None if ui.may_manage() else ui.NEEDS_KEY):
                try:
                    if not ui.may_manage():
                        raise ValueError(ui.NEEDS_KEY)
                    kept = runs.keep_checkpoint(run, checkpoint_name)
                    st.success(f"Kept as {ui.literal(kept.name)} in {ui.literal(str(kept.parent))}; the Draw page "
                               "lists it.")
                except (ValueError, OSError) as error:
                    st.error(ui.literal(str(error)))
    with download:  # the file is read on a click only, not at every redraw of every page that shows the run
        st.download_button("Download checkpoint", data=run.checkpoint_bytes, file_name=f"{run.name}.safetensors",
                           mime="application/octet-stream")


st.title("Train")
ui.runs_page()
ui.start_message("train")
has_data = ui.dataset_warning()
all_runs = runs.list_runs()  # after Start's callback: with the run it started
ui.run_names_kept(MENU)
shown = st.session_state.get(SHOWN)
if shown and shown not in [run.name for run in all_runs]:  # shown before, listed no more: its folder was deleted
    st.warning(f"Run {ui.literal(shown)} was deleted.", icon=":material/delete:")
if all_runs:
    run_view(all_runs)
else:
    st.info("No runs yet: pick a preset and press Start." if has_data else "No runs yet.")

with ui.form_expander("New run", "train"):
    st.caption("Meta-train a model on Omniglot. The run is a process of its own: it goes on when you reload or "
               "close the page, and every browser tab sees it.")
    preset_name, defaults = ui.preset_picker("train")
    with st.form("train_form", border=False):
        ui.config_fields("train", preset_name, defaults)
        ui.concurrent_note(all_runs)
        ui.start_button("Start", "train", preset_name, start_run, disabled=not has_data)
