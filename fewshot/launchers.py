"""Where runs' training processes live: on this machine (LocalProcesses, the default), or as jobs of a Ray
cluster (ray_jobs.RayJobs, when FEWSHOT_RAY_ADDRESS is set). runs.py starts, watches and stops runs through
these two only. A launcher returns what it needs to find the run again, and runs.py keeps it in the run's
launch.json; so a run is watched and stopped by the launcher that started it, whatever the server's
setting is now.
"""

import os
import signal
import subprocess
from pathlib import Path

from .config import REPO_ROOT
from .files import open_regular

TRAINING_NICENESS = 10  # runs yield the cores to the web server: a click is answered at once, charts keep pace


class LocalProcesses:
    """Each run a process of this machine, in a session of its own, so that it outlives the web server."""

    def launch(self, run_dir: Path, command: list, environment: dict, log: Path, threads: int) -> dict:
        with open_regular(log, "ab") as output:  # a FIFO in its place would hold the queue (dispatch) for good
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:  # before torch starts its threads, which inherit the priority
            os.setpriority(os.PRIO_PROCESS, process.pid, TRAINING_NICENESS)
        except OSError:  # the process ended already: its status says why
            pass
        return {"pid": process.pid}

    def is_alive(self, launch: dict, run_dir: Path) -> bool:
        pid = launch.get("pid")
        return pid is not None and process_alive(pid, run_dir)

    def stop(self, launch: dict, run_dir: Path) -> None:
        """SIGINT, on which training finishes its iteration, saves and exits."""
        if self.is_alive(launch, run_dir):
            os.kill(launch["pid"], signal.SIGINT)


def launcher():
    """The launcher that new runs go to: a Ray cluster's, where FEWSHOT_RAY_ADDRESS names one, else this
    machine's."""
    address = os.environ.get("FEWSHOT_RAY_ADDRESS", "").strip()
    if address:
        from .ray_jobs import RayJobs  # only then: Ray is needed only to serve runs on a cluster
        return RayJobs(address)
    return LocalProcesses()


def launcher_of(launch: dict):
    """The launcher that started the run whose launch.json holds `launch`."""
    if "ray_job" in launch:
        from .ray_jobs import RayJobs
        return RayJobs(launch.get("ray_address") or "")
    return LocalProcesses()


def process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still the training process of `run_dir`."""
    try:  # our own child? Then it is alive until we reap it (which we must, or it lingers as a zombie)
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:  # not our child: started by an earlier server, or by another process
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now belongs to another user's process
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # on Linux, make sure the id was not reused by another process: its --run-dir is this run's
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return any(flag == b"--run-dir" and Path(os.fsdecode(value)).name == run_dir.name
                   for flag, value in zip(arguments, arguments[1:]))
    return True
