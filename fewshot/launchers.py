"""Where runs' training processes live: on this machine (LocalProcesses, the default), or as jobs of a Ray
cluster (ray_jobs.RayJobs, when FEWSHOT_RAY_ADDRESS is set). runs.py starts, watches and stops runs through
these two only (WithoutRay stands in for Ray where it is not installed). A launcher returns what it needs to
find the run again, and runs.py keeps it in the run's launch.json; so a run is watched and stopped by the
launcher that started it, whatever the server's setting is now.
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
        try:
            from .ray_jobs import RayJobs  # only then: Ray is needed only to serve runs on a cluster
        except ImportError:  # a RuntimeError, which dispatch keeps as each queued run's launch error, for its page
            raise RuntimeError("FEWSHOT_RAY_ADDRESS names a Ray cluster, but Ray is not installed here: pip "
                               "install -r requirements-ray.txt, or unset it to train on this machine") from None
        return RayJobs(address)
    return LocalProcesses()


class WithoutRay:
    """The launcher of a Ray job on a server without Ray (it is optional: a runs folder that a cluster's server
    wrote, shared or copied): it cannot ask the cluster, so the job counts as ended, and it stops nothing."""

    def is_alive(self, launch: dict, run_dir: Path) -> bool:
        return False

    def stop(self, launch: dict, run_dir: Path) -> None:
        pass


def launcher_of(launch: dict):
    """The launcher that started the run whose launch.json holds `launch`."""
    if "ray_job" in launch:
        try:
            from .ray_jobs import RayJobs
        except ImportError:  # every page that lists runs, and the queue, would fail on this one run
            return WithoutRay()
        return RayJobs(launch.get("ray_address") or "")
    return LocalProcesses()


def process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still the training process of `run_dir`. Once a run's process has ended, its id is
    free, and another process may take it: this server's next trainer too, so that a child of ours is checked
    as any other process is (else the ended run would read as running, and its Stop signal another run)."""
    try:  # our own child that ended: reap it (else it lingers as a zombie)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
        ours = True
    except ChildProcessError:  # not our child: started by an earlier server, or by another process
        ours = False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now belongs to another user's process
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # on Linux, make sure the id was not reused by another process: its --run-dir is this run's
        try:
            arguments = cmdline.read_bytes()
        except OSError:
            return False
        if not arguments:  # a process that Popen has just started shows its command line some time after (0.04 ms
            return ours  # was typical here, 8 ms the most): ours, it is the trainer just launched
        arguments = arguments.split(b"\0")
        return any(flag == b"--run-dir" and Path(os.fsdecode(value)).name == run_dir.name
                   for flag, value in zip(arguments, arguments[1:]))
    return True
