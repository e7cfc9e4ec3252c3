"""A hardening review of the run lifecycle (fewshot/runs.py, fewshot/launchers.py): process ids taken again,
a full disk, a server without Ray, odd files in a run's folder."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fake_runs import record, run_folder
from fewshot import files, launchers, runs
from fewshot.config import Config
from waiting import outcome_within, wait_for


@pytest.fixture
def signals(monkeypatch) -> list:
    """The (pid, signal) of every signal the launchers send; signal 0, which only asks whether a process
    lives, is passed on and not recorded."""
    sent, kill = [], os.kill
    monkeypatch.setattr(launchers.os, "kill", lambda pid, number: kill(pid, 0) if number == 0 else
                        sent.append((pid, number)))
    return sent


@pytest.fixture
def child(tmp_path):
    """Starts a process of this one, as the server's trainers are, whose --run-dir is the given folder; returns
    once the system shows its command line (a trainer running for a while)."""
    started = []

    def start(run_dir: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "train", "--run-dir",
                                    str(run_dir)])
        started.append(process)
        wait_for(lambda: Path(f"/proc/{process.pid}/cmdline").read_bytes(), "its command line")
        return process
    yield start
    for process in started:
        process.kill()
        process.wait()


def launched(root: Path, name: str, pid: int) -> runs.Run:
    """A run folder whose launch.json names the process `pid` as its trainer."""
    return run_folder(root, name, launch=json.dumps({"pid": pid, "started": 1.0,
                                                     "config": Config(iterations=6).to_dict()}),
                      metrics=[record(1)])


def test_a_process_id_that_this_servers_next_trainer_took_is_not_the_ended_runs(tmp_path, child, signals):
    """pid_max is 32768 on many Linux machines: on a server that runs for weeks, a run that ended can see its id
    taken by another run's trainer, a child of the server too. The ended run read as running (for good, holding
    a place of the queue), and its Stop signalled the other student's run."""
    other = child(tmp_path / "other-run")
    ended = launched(tmp_path, "ended-run", other.pid)
    assert not ended.is_running() and ended.status() == runs.INTERRUPTED
    runs.stop(ended)
    assert signals == [] and other.poll() is None
    own = launched(tmp_path, "other-run", other.pid)  # its --run-dir: this is its trainer
    assert own.is_running()
    runs.stop(own)
    assert signals == [(other.pid, signal.SIGINT)]


def test_a_trainer_just_started_whose_command_line_the_system_does_not_show_yet_is_running(tmp_path, child,
                                                                                          monkeypatch):
    """Right after Popen returns, /proc/<pid>/cmdline is mostly empty (192 times of 200 here, for up to 8 ms): the
    run that dispatch has just started would read as interrupted, and a Stop then would not signal it."""
    process = child(tmp_path / "run")
    run = launched(tmp_path, "run", process.pid)
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda path: b"" if path == Path(f"/proc/{process.pid}/cmdline") else
                        read_bytes(path))
    assert run.is_running()


def test_a_child_trainer_that_ended_is_reaped_and_not_running(tmp_path, child):
    """Checked as any other process is, a child of ours is still reaped when it has ended (else a zombie)."""
    process = child(tmp_path / "run")
    run = launched(tmp_path, "run", process.pid)
    assert run.is_running()
    process.kill()
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: a zombie
    assert not run.is_running()
    with pytest.raises(ChildProcessError):  # reaped by the check
        os.waitpid(process.pid, os.WNOHANG)
    process.returncode = -9  # for the fixture's wait


def test_a_ray_job_on_a_server_without_ray_counts_as_ended_and_breaks_no_page_nor_the_queue(tmp_path, monkeypatch):
    """Ray is optional (requirements-ray.txt). A runs folder that a cluster's server wrote (shared, or copied)
    made Run.status raise ImportError: the Train and Compare pages failed for everyone, and the queue stopped."""
    monkeypatch.setitem(sys.modules, "fewshot.ray_jobs", None)  # its import fails, as without Ray
    started = []

    class Recording(launchers.LocalProcesses):
        def launch(self, run_dir, command, environment, log, threads):
            started.append(Path(run_dir).name)
            return {"pid": 5_000_000}  # above any system's pid_max: no process

    monkeypatch.setattr(launchers, "launcher", Recording)
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    config = Config(iterations=6).to_dict()
    on_ray = run_folder(tmp_path, "on-ray", launch=json.dumps({
        "started": 1.0, "config": config, "arguments": [], "ray_job": "raysubmit_1",
        "ray_address": "http://head:8265"}))
    queued = run_folder(tmp_path, "queued", launch=json.dumps({"started": 2.0, "queued": 2.0, "config": config,
                                                               "arguments": []}))
    assert not on_ray.is_running() and on_ray.status() == runs.INTERRUPTED
    runs.stop(on_ray)  # nothing to signal: no error
    assert runs.dispatch(tmp_path) == [queued] and started == ["queued"]


def test_a_ray_address_on_a_server_without_ray_queues_the_run_and_says_why(tmp_path, monkeypatch):
    """An instructor who set FEWSHOT_RAY_ADDRESS but did not install requirements-ray.txt: Start raised
    ModuleNotFoundError, a traceback on the page (its run queued all the same), and so did the queue every 2 s."""
    monkeypatch.setitem(sys.modules, "fewshot.ray_jobs", None)  # its import fails, as without Ray
    monkeypatch.setenv("FEWSHOT_RAY_ADDRESS", "http://head:8265")
    run = runs.start(Config(iterations=6), tmp_path)
    assert run.is_queued() and run.launch()["launch_error"] == (
        "FEWSHOT_RAY_ADDRESS names a Ray cluster, but Ray is not installed here: pip install -r "
        "requirements-ray.txt, or unset it to train on this machine")


def fill_the_disk(monkeypatch) -> None:
    """No room for a file's data from now on, as on a full tmpfs, where an empty file still has room (checked by
    hand on a 64 KB tmpfs filled: Path.write_text raised ENOSPC, Path.touch made the file)."""
    def no_room(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(Path, "write_text", no_room)
    monkeypatch.setattr(Path, "write_bytes", no_room)


def test_stop_on_a_full_disk_stops_the_run(tmp_path, child, signals, monkeypatch):
    """The time to stop runs: writing stop_requested's date raised ENOSPC, a traceback on the page, and the
    run was never signalled."""
    process = child(tmp_path / "run")
    run = launched(tmp_path, "run", process.pid)
    fill_the_disk(monkeypatch)
    runs.stop(run)
    assert signals == [(process.pid, signal.SIGINT)]
    assert (run.path / runs.STOP_REQUESTED).exists()  # it reads as stopped once it ends, not as failed


def test_stop_signals_the_run_even_where_its_marker_cannot_be_made(tmp_path, child, signals, monkeypatch):
    process = child(tmp_path / "run")
    run = launched(tmp_path, "run", process.pid)

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(Path, "touch", read_only)
    monkeypatch.setattr(Path, "write_text", read_only)
    runs.stop(run)
    assert signals == [(process.pid, signal.SIGINT)]


def test_a_stop_requested_that_is_a_fifo_is_not_waited_on(tmp_path):
    """Writing to a FIFO waits for a reader: Stop waited so under the queue lock, and with it every Start, Stop,
    Resume, Delete and the queue, for good."""
    fifo = run_folder(tmp_path / "runs", "fifo", metrics=[record(1)])
    os.mkfifo(fifo.path / runs.STOP_REQUESTED)
    assert outcome_within(lambda: runs.stop(fifo)) is None
    assert outcome_within(lambda: runs.dispatch(tmp_path / "runs")) == []


def test_a_stop_requested_that_links_to_a_file_elsewhere_does_not_write_it(tmp_path):
    """Stop overwrote the file that the link names, outside the runs folder, with the date."""
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("a student's notes\n")
    linked = run_folder(tmp_path / "runs", "linked", metrics=[record(1)])
    (linked.path / runs.STOP_REQUESTED).symlink_to(elsewhere)
    runs.stop(linked)
    assert elsewhere.read_text() == "a student's notes\n" and linked.status() == runs.STOPPED


def test_a_trainer_that_launch_json_cannot_name_is_stopped_not_started_again_and_again(tmp_path, monkeypatch):
    """A full disk after the start: launch.json kept no process id, so the run stayed queued, uncounted, and
    each dispatch (every 2 s) started one more trainer in its folder (three dispatches, three trainers)."""
    started, stopped = [], []

    class Recording(launchers.LocalProcesses):
        def launch(self, run_dir, command, environment, log, threads):
            started.append(5_000_000 + len(started))  # above any system's pid_max: no process
            return {"pid": started[-1]}

        def stop(self, launch, run_dir):
            stopped.append(launch["pid"])

    monkeypatch.setattr(launchers, "launcher", Recording)
    monkeypatch.setattr(launchers, "launcher_of", lambda launch: Recording())
    run = run_folder(tmp_path, "queued", launch=json.dumps({"started": 1.0, "queued": 1.0, "arguments": [],
                                                            "config": Config(iterations=6).to_dict()}))
    write_text = files.write_text

    def full(path, text):
        if Path(path).name == runs.LAUNCH:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_text(path, text)

    monkeypatch.setattr(files, "write_text", full)
    for _ in range(3):
        with pytest.raises(OSError, match="No space left on device"):
            runs.dispatch(tmp_path)
    assert len(started) == 3 and stopped == started and run.is_queued()


def test_a_queued_run_that_cannot_start_holds_none_of_the_runs_queued_after_it(tmp_path, monkeypatch):
    """dispatch stopped at the first run that it could not start (here a train.log that is a FIFO, which the local
    launcher refuses): that run was tried again every 2 s, and every run queued after it waited, for good."""
    started = []

    class Recording(launchers.LocalProcesses):
        def launch(self, run_dir, command, environment, log, threads):
            with files.open_regular(log, "ab"):  # as the local launcher opens it
                pass
            started.append(Path(run_dir).name)
            return {"pid": 5_000_000}  # above any system's pid_max: no process, it counts as ended

    monkeypatch.setattr(launchers, "launcher", Recording)
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    config = Config(iterations=6).to_dict()
    stuck, after = (run_folder(tmp_path, name, launch=json.dumps({"started": when, "queued": when, "arguments": [],
                                                                 "config": config}))
                    for name, when in (("stuck", 1.0), ("after", 2.0)))
    os.mkfifo(stuck.path / runs.LOG)
    assert runs.dispatch(tmp_path) == [after] and started == ["after"]
    assert stuck.is_queued() and "train.log" in stuck.launch()["launch_error"]
    (stuck.path / runs.LOG).unlink()  # fixed: it starts at the next dispatch
    assert runs.dispatch(tmp_path) == [stuck]
