"""Runs as jobs of a Ray cluster (fewshot/ray_jobs.py), through runs.py as the pages use it, where
FEWSHOT_RAY_ADDRESS names the cluster: a local Ray head, on 127.0.0.1 only, started once for the module."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from fewshot import runs
from fewshot.checkpoints import load_checkpoint
from fewshot.training import ENDED, STOP_GRACE
from waiting import wait_for

pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install -r requirements-ray.txt")
from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402 - only where Ray is installed

from fewshot import ray_jobs  # noqa: E402 - it imports Ray

PORTS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
         "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
         "--object-manager-port", "DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")  # options, then variables


def free_ports(count: int) -> list:
    """`count` distinct ports of 127.0.0.1 that nothing listens on now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A Ray head with 2 CPUs, every port of it on 127.0.0.1: Ray takes --node-ip-address 127.0.0.1 at its
    word only where it is told it runs no real cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); else it puts the
    machine's own address in its place, and binds it, or every address.
    `ray stop` would stop every Ray process of the machine, other clusters' too: this head runs with
    --block, and SIGTERM to it stops its cluster, and only it. Yields its dashboard's address."""
    folder = tmp_path_factory.mktemp("ray")
    ports = dict(zip(PORTS, map(str, free_ports(len(PORTS)))))
    options = [word for name, port in ports.items() if name.startswith("--") for word in (name, port)]
    environment = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                       **{name: port for name, port in ports.items() if not name.startswith("--")})
    log = open(folder / "head.log", "wb")
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--num-cpus", "2",
                             "--temp-dir", str(folder / "t"), "--disable-usage-stats", *options],
                            cwd=folder, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)  # not in the repository: jobs start where Ray was started
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        wait_for(lambda: head.poll() is not None or jobs_api_answers(address), "the Ray head's Jobs API", 180)
        assert head.poll() is None, (folder / "head.log").read_text()[-3000:]
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()


def jobs_api_answers(address: str) -> bool:
    try:
        JobSubmissionClient(address).list_jobs()
        return True
    except (OSError, RuntimeError):
        return False


def ray_job(run: runs.Run) -> str:
    """The Ray job that trains `run`: runs.py went through RayJobs, not a process of this machine."""
    launch = run.launch()
    assert launch.get("pid") is None and launch.get("ray_job"), launch
    return launch["ray_job"]


@pytest.mark.slow
def test_a_run_trains_as_a_ray_job_and_its_metrics_reach_the_train_page(ray_address, tiny_config, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("FEWSHOT_RAY_ADDRESS", ray_address)
    run = runs.start(tiny_config, tmp_path)
    job = ray_job(run)
    wait_for(lambda: run.status() not in (runs.QUEUED, runs.RUNNING), "the run to end", 180)
    assert run.status() == runs.FINISHED, run.error()
    assert JobSubmissionClient(ray_address).get_job_status(job) == JobStatus.SUCCEEDED
    assert [r["iteration"] for r in runs.Run(run.path).metrics()] == list(range(1, tiny_config.iterations + 1))
    assert run.evaluation()["tasks"] == tiny_config.test_tasks
    log = (run.path / runs.LOG).read_text()
    assert f"run directory: {run.path}" in log and run.error() == f"checkpoint: {run.checkpoint}"


@pytest.mark.slow
def test_stop_ends_a_ray_job_after_its_iteration_and_keeps_what_it_learned(ray_address, tiny_config, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("FEWSHOT_RAY_ADDRESS", ray_address)
    run = runs.start(dataclasses.replace(tiny_config, iterations=100_000, checkpoint_every=100_000), tmp_path)
    job = ray_job(run)
    wait_for(lambda: len(run.metrics()) >= 3, "three iterations", 180)
    runs.stop(run)
    wait_for(lambda: not run.is_running(), "the run to stop", 180)
    assert run.status() == runs.STOPPED
    client = JobSubmissionClient(ray_address)
    assert client.get_job_status(job) == JobStatus.STOPPED
    done = run.metrics()[-1]["iteration"]
    assert 3 <= done < 100_000
    assert load_checkpoint(run.checkpoint)[1]["iterations"] == done  # saved on the way out
    # It stopped through Python (its `ended`, its last line), not killed; and a slower save would have had time
    log = (run.path / runs.LOG).read_text()
    assert "Stopping after this iteration" in log and run.error() == f"checkpoint: {run.checkpoint}", log[-2000:]
    assert (run.path / ENDED).exists()
    waits = float(client.get_job_info(job).runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])
    assert waits >= 60 > STOP_GRACE  # a minute, to save on a slow shared disk, after training's own grace


@pytest.mark.slow
def test_a_job_waits_for_a_node_with_a_core_per_thread(ray_address, tmp_path):
    jobs, client = ray_jobs.RayJobs(ray_address), JobSubmissionClient(ray_address)
    wide = jobs.launch(tmp_path, ["true"], {}, tmp_path / "wide.log", threads=3)  # the head has 2 CPUs
    narrow = jobs.launch(tmp_path, ["true"], {}, tmp_path / "narrow.log", threads=1)
    wait_for(lambda: client.get_job_status(narrow["ray_job"]).is_terminal(), "the one-thread job to end")
    assert client.get_job_status(narrow["ray_job"]) == JobStatus.SUCCEEDED
    assert client.get_job_status(wide["ray_job"]) == JobStatus.PENDING  # it stays so, till the head stops
    assert jobs.is_alive(wide, tmp_path)


class FakeCluster:
    """Answers get_job_status as `answer()` says, counting the questions."""

    def __init__(self, answer):
        self.answer, self.questions = answer, 0

    def get_job_status(self, job):
        self.questions += 1
        return self.answer()


def test_pages_asking_each_second_ask_the_cluster_every_few_seconds_and_outlast_its_silence(monkeypatch):
    cluster = FakeCluster(lambda: JobStatus.RUNNING)
    monkeypatch.setattr(ray_jobs, "_client", lambda address: cluster)
    jobs = ray_jobs.RayJobs("http://127.0.0.1:1")
    launch = {"ray_job": "raysubmit_a", "ray_address": jobs.address}
    assert [jobs.is_alive(launch, None) for _ in range(20)] == [True] * 20
    assert cluster.questions == 1
    monkeypatch.setattr(ray_jobs, "ANSWER_KEPT_S", 0.0)

    def silence():
        raise ConnectionError("no route to host")
    cluster.answer = silence
    assert jobs.is_alive(launch, None)  # a moment's silence: the last answer holds
    with pytest.raises(RuntimeError, match=r"^Ray cluster at http://127\.0\.0\.1:1 does not answer"):
        jobs.stop(launch, None)  # the run goes on: Stop says so
    monkeypatch.setattr(ray_jobs, "SILENCE_TRUSTED_S", 0.0)
    assert not jobs.is_alive(launch, None)  # silent too long: the run has ended, for the pages


def test_a_cluster_that_does_not_answer_or_an_address_that_is_not_one_says_so_in_a_line(monkeypatch):
    unreachable = f"http://127.0.0.1:{free_ports(1)[0]}"
    for address, message in ((unreachable, "does not answer"), ("127.0.0.1:6379", "not a Ray dashboard's address")):
        jobs = ray_jobs.RayJobs(address)
        with pytest.raises(RuntimeError, match=message) as error:
            jobs.launch(None, ["true"], {}, "/dev/null", 1)
        assert str(error.value).startswith(f"Ray cluster at {address}") and "\n" not in str(error.value)
        assert not jobs.is_alive({"ray_job": "raysubmit_x", "ray_address": address}, None)


def test_a_cluster_that_takes_the_connection_but_never_answers_is_given_up_on(monkeypatch):
    hung = socket.socket()  # the kernel takes connections into its backlog; nothing ever answers them
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    monkeypatch.setattr(ray_jobs, "STATUS_TIMEOUT_S", 0.5)
    jobs = ray_jobs.RayJobs(f"http://127.0.0.1:{hung.getsockname()[1]}")
    answers = []
    asking = threading.Thread(target=lambda: answers.append(jobs.is_alive({"ray_job": "raysubmit_y"}, None)),
                              daemon=True)
    asking.start()
    asking.join(timeout=60)  # without a time limit, for ever
    hung.close()
    assert answers == [False]
