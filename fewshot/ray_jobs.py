"""Runs as jobs of a Ray cluster, through Ray's Jobs API: launchers.launcher() picks this where
FEWSHOT_RAY_ADDRESS names the cluster's dashboard (http://HEAD:8265).

The cluster's nodes see the same files as the app, at the same paths (shared storage: the repository, its
Python, the runs folder, Omniglot). So a job is the very command LocalProcesses runs, started by a shell on
a node with a free core per torch thread: it goes to the repository and appends its output to the run's
train.log, which the pages read as they do a local run's. A job waits (PENDING) while no node has the cores.
"""

import shlex
import threading
import time

from ray.job_submission import JobSubmissionClient

from .config import REPO_ROOT

PASSED_ON = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONUNBUFFERED", "TQDM_MININTERVAL")  # and every FEWSHOT_*
# To stop a job, Ray's job supervisor signals its processes (RAY_JOB_STOP_SIGNAL, SIGTERM by default), waits
# RAY_JOB_STOP_WAIT_TIME_S (3 s by default), then sends SIGKILL. It reads both from its environment, which
# the job's runtime_env sets: SIGTERM (training saves on it; Ray blocks SIGINT in its processes), and time
# for training to finish its iteration, or give up on it after training.STOP_GRACE, and save.
STOP_SETTINGS = {"RAY_JOB_STOP_SIGNAL": "SIGTERM", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
# Time limits on each request to the cluster (Ray's client sets none, and a page must not hang): to connect,
# then for an answer: a status at once; a submission or a stop, once the head has started or signalled processes
CONNECT_TIMEOUT_S, STATUS_TIMEOUT_S, ACTION_TIMEOUT_S = 5, 5, 60
ANSWER_KEPT_S = 2.0  # pages ask each second whether each run listed is alive: the cluster is asked this often
SILENCE_TRUSTED_S = 30.0  # while the cluster does not answer, its last answer holds this long, then "ended"
SILENT_RETRY_S = 10.0  # a cluster that did not answer is asked again after this long: "does not answer" till then
MAX_KEPT = 1024  # answers kept, for the jobs asked about last
MAX_ADDRESSES = 16  # clusters whose client and silence are kept (launch.json files name theirs: a hand edit may add)


class ClusterSilent(RuntimeError):
    """The cluster did not answer: down, unreachable, or too slow."""


class RayJobs:
    def __init__(self, address: str):
        self.address = address

    def launch(self, run_dir, command: list, environment: dict, log, threads: int) -> dict:
        """Submits the run; RuntimeError, in one line, when the cluster does not take it."""
        variables = [f"{name}={value}" for name, value in environment.items()
                     if name in PASSED_ON or name.startswith("FEWSHOT_")]
        entrypoint = (f"cd {shlex.quote(str(REPO_ROOT))} && exec env {shlex.join(variables + list(command))} "
                      f">> {shlex.quote(str(log))} 2>&1")
        job = self._ask(lambda client: client.submit_job(
            entrypoint=entrypoint, entrypoint_num_cpus=threads, runtime_env={"env_vars": STOP_SETTINGS},
            metadata={"run_dir": str(run_dir)}))
        return {"ray_job": job, "ray_address": self.address}

    def is_alive(self, launch: dict, run_dir) -> bool:
        """Whether the job is pending or running, as the cluster said at most ANSWER_KEPT_S ago. A job the
        cluster does not know (it was restarted) has ended; while the cluster does not answer, its last
        answer holds for SILENCE_TRUSTED_S, so that a moment's silence does not end every run on the pages."""
        job, now = launch["ray_job"], time.monotonic()
        with _lock:
            asked, answered, alive = _answers.get(job, (0.0, 0.0, False))
        if now - asked < ANSWER_KEPT_S:
            return alive
        try:
            alive, answered = not self._ask(lambda client: client.get_job_status(job)).is_terminal(), now
        except ClusterSilent:
            alive = alive and now - answered < SILENCE_TRUSTED_S
        except RuntimeError:  # the cluster answered with an error: it has no such job
            alive, answered = False, now
        with _lock:
            _answers.pop(job, None)
            _answers[job] = (now, answered, alive)
            if len(_answers) > MAX_KEPT:
                del _answers[next(iter(_answers))]
        return alive

    def stop(self, launch: dict, run_dir) -> None:
        """Asks Ray to stop the job: SIGTERM (STOP_SETTINGS), on which training finishes its iteration, saves
        and exits. A job still waiting for cores ends when it gets them. RuntimeError when the cluster does
        not answer: the run goes on."""
        if self.is_alive(launch, run_dir):
            self._ask(lambda client: client.stop_job(launch["ray_job"]))

    def _ask(self, request):
        """request(client), with the cluster's client; ClusterSilent when the cluster does not answer, and
        RuntimeError, in one line, when it answers with an error."""
        with _lock:
            silent = _silent_until.get(self.address, 0.0) > time.monotonic()
        try:
            if silent:
                raise ConnectionError("no answer a moment ago")
            return request(_client(self.address))
        except OSError as error:  # no connection, or no answer in time (requests' errors are OSErrors)
            with _lock:
                if len(_silent_until) >= MAX_ADDRESSES:
                    _silent_until.clear()
                _silent_until[self.address] = time.monotonic() + SILENT_RETRY_S
            raise ClusterSilent(f"Ray cluster at {self.address} does not answer: {error}") from None
        except RuntimeError as error:
            line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RuntimeError(f"Ray cluster at {self.address}: {line}") from None


_lock = threading.Lock()
_answers = {}  # job id -> (when asked, when the cluster last answered, alive), in the order of their last use
_silent_until = {}  # address -> until when it is taken not to answer
_clients = {}  # address -> its client, which asks the cluster its version when made: made once


class _Client(JobSubmissionClient):
    """Ray's client, with time limits on every request it makes."""

    def _do_request(self, method, *args, **kwargs):
        answer = ACTION_TIMEOUT_S if method == "POST" else STATUS_TIMEOUT_S
        return super()._do_request(method, *args, timeout=(CONNECT_TIMEOUT_S, answer), **kwargs)


def _client(address: str) -> JobSubmissionClient:
    """The client of the cluster whose dashboard is at `address`. Only a dashboard's http(s) address: Ray's
    client takes others too (a GCS address, ray://), but then joins the cluster from the web server's
    process, waits a minute where nothing answers, and installs its own signal handlers."""
    if not address.startswith(("http://", "https://")):
        raise RuntimeError("not a Ray dashboard's address (FEWSHOT_RAY_ADDRESS takes one like http://HEAD:8265)")
    with _lock:
        client = _clients.get(address)
    if client is None:
        client = _Client(address)
        with _lock:
            if len(_clients) >= MAX_ADDRESSES:
                _clients.clear()
            _clients[address] = client
    return client
