"""What the Train and Compare pages send each viewer while long runs train: the websocket bytes that Chromium
receives from `streamlit run app.py` on 127.0.0.1, per redraw and per second, and for a class.

    python3 scripts/live_bytes.py [--iterations 50000] [--seconds 20] [--pace 5] [--class-size 30] [--screenshots DIR]

Two fake runs of one comparison (MAML, probed every --probe-every iterations, and FOMAML), --iterations records
each, validated every --val-every, are written into a temporary runs folder. Each has a process of its own that
appends --pace records a second and that the app takes for the run's training process (its command line names
the run's folder after --run-dir, as training's does), so the pages show the runs as running and redraw them.
Each page is opened alone in one headless Chromium and measured for --seconds, in three states: the runs
growing; running but not growing (their processes paused with SIGSTOP); finished (processes ended,
evaluation.json written). The bytes are the payloads of Network.webSocketFrameReceived (Chrome DevTools
Protocol); a redraw is a ForwardMsg script_finished of the page or of its live fragment.

No dataset is needed (the pages only say it is missing); nothing is trained. It prints a table, then what kinds
of messages the bytes were, per page and state.

Measured here with --iterations 100000 (2 cores). Before: 2,000 points a curve, in Streamlit's default Arrow
table: Train 384 KB a redraw (every 1 s), Compare 2.37 MB (every 2 s; the browser kept up with 7 of 10), for a
class of 30 some 35 MB/s. After (fewshot/plots.py: 250 points a meta-train curve, 125 a validation curve;
app_ui.vega_chart: text columns as categories): Train 19.5 KB a redraw, Compare 91 KB (45 KB/s), 1.4 MB/s for a
class; a finished run's page sends nothing. Streamlit sends an unchanged element of 10 KB or more
(global.minCachedMessageSize) as a reference to the browser's copy: the charts are under that now, and go again
whole while a run is between two records (Train: 19.5 KB a redraw; 2.4 KB with the option at 1,000 bytes).
"""

import argparse
import base64
import collections
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser import CHARTS, CHROMIUM, FINISHED_RUN, launch_chromium, open_app_page, served_app  # noqa: E402
from fake_runs import run_folder  # noqa: E402
from fewshot import runs  # noqa: E402
from fewshot.config import Config  # noqa: E402
from fewshot.files import write_text  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 120_000
PAGES = {"Train": ("Train", 2), "Compare": ("MAML and FOMAML", 4 + 3)}  # heading, charts drawn (MAML's probe: 3)
REFRESH_S = {"Train": 1.0, "Compare": 2.0}  # pages/train.py's and pages/compare.py's ui.live(every=...)
LAYERS = ("block 1", "block 2", "block 3", "block 4", "classifier")  # Config's default network
SETTLE_S = 3.0  # after the charts are drawn, before counting: the page's opening is not counted


def fake_record(iteration: int, algorithm: str, iterations: int, val_every: int, probe_every: int) -> dict:
    """A metrics record as training writes one: noisy, falling loss; validation and MAML's probe at times."""
    rng = random.Random(f"{algorithm}-{iteration}")
    progress = iteration / iterations
    loss = 0.3 + 1.3 * math.exp(-4 * progress)
    record = {"iteration": iteration, "train_loss": loss * rng.uniform(0.6, 1.4),
              "train_accuracy": min(1.0, (1 - loss / 2) * rng.uniform(0.85, 1.1)), "training_memory_mb": 120.5}
    if algorithm == "maml" and iteration % probe_every == 0:
        def measures():
            g2 = rng.uniform(0.5, 2)
            return {"cosine": rng.uniform(0.6, 1), "norm_ratio": rng.uniform(0.8, 1.2),
                    "dropped_norm": g2 * rng.uniform(0.1, 0.5), "g2_norm": g2}
        record["probe"] = {**measures(), "layers": {layer: measures() for layer in LAYERS}, "seconds": 0.2}
    if iteration % val_every == 0:
        record.update(val_loss=loss * rng.uniform(0.95, 1.05), val_accuracy=1 - loss / 2 * rng.uniform(0.95, 1.05))
    seconds_per_iteration = 0.6 if algorithm == "maml" else 0.4
    record.update(seconds=round(seconds_per_iteration * iteration, 4),
                  tasks_per_second=round(4 / seconds_per_iteration, 2), peak_memory_mb=900.0)
    return record


def trainer(run_dir: Path, config: Config, first: int, pace: float) -> None:
    """A run's stand-in for its training process: appends a record every 1 / pace seconds, from iteration
    `first` on, until the run's iterations are done or the script that started it is gone."""
    parent = os.getppid()
    with open(run_dir / runs.METRICS, "a") as metrics:
        for iteration in range(first, config.iterations + 1):
            if os.getppid() != parent:
                return
            metrics.write(json.dumps(fake_record(iteration, config.algorithm, config.iterations, config.val_every,
                                                 config.probe_every)) + "\n")
            metrics.flush()
            time.sleep(1 / pace)


def start_runs(root: Path, arguments) -> list:
    """The two runs, each with its trainer process; returns the processes."""
    processes = []
    for algorithm in ("fomaml", "maml"):  # MAML last: the newest, which the Train page shows first
        config = Config(algorithm=algorithm, iterations=2 * arguments.iterations, val_every=arguments.val_every,
                        probe_every=arguments.probe_every)
        records = [fake_record(i, algorithm, config.iterations, config.val_every, config.probe_every)
                   for i in range(1, arguments.iterations + 1)]
        run = run_folder(root, f"{algorithm}-long", metrics=records, config=config, comparison="live-bytes")
        (run.path / runs.CONFIG).write_text(json.dumps(config.to_dict()))
        process = subprocess.Popen([sys.executable, __file__, "--run-dir", str(run.path), "--pace",
                                    str(arguments.pace), "--first", str(arguments.iterations + 1)])
        processes.append(process)
        write_text(run.path / runs.LAUNCH, json.dumps({"pid": process.pid, "started": time.time(),
                                                       "config": config.to_dict(), "comparison": "live-bytes"}))
    return processes


def finish_runs(root: Path, processes: list) -> None:
    """Ends the trainers and writes each run's evaluation.json: the runs are finished."""
    for process in processes:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(timeout=30)
    for run in runs.list_runs(root):
        config = run.config()
        write_text(run.path / runs.EVALUATION, json.dumps({"split": "lake/test", "accuracy": 0.9, "ci95": 0.01,
                                                           "ways": config.ways, "shots": config.shots,
                                                           "tasks": 100, "inner_steps": 1}))


class Received:
    """The websocket frames a tab receives (Chrome DevTools Protocol): bytes in all and by kind of message, and
    the script runs finished (page or fragment), since the last reset()."""

    def __init__(self, page):
        self.reset()
        session = page.context.new_cdp_session(page)
        session.on("Network.webSocketFrameReceived", self._received)
        session.send("Network.enable")

    def reset(self) -> None:
        self.bytes, self.redraws, self.by_kind = 0, 0, collections.Counter()

    def _received(self, event: dict) -> None:
        frame = event["response"]
        payload = base64.b64decode(frame["payloadData"]) if frame["opcode"] == 2 else frame["payloadData"].encode()
        self.bytes += len(payload)
        kind = "text"
        if frame["opcode"] == 2:
            message = ForwardMsg.FromString(payload)
            kind = message.WhichOneof("type")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                kind = message.delta.new_element.WhichOneof("type")
            self.redraws += kind == "script_finished" and message.script_finished in FINISHED_RUN
        self.by_kind[kind] += len(payload)


def measure(browser, url: str, name: str, seconds: float, screenshot: Path | None = None) -> dict:
    """Opens page `name` alone in a tab, waits until its charts are drawn, then counts for `seconds`; saves a
    screenshot of the whole page in `screenshot`, if given."""
    heading, charts = PAGES[name]
    tabs = []  # the tab's Received, made before it loads anything
    page = open_app_page(browser, url, VIEWPORT, name, heading, TIMEOUT_MS,
                         watch=lambda tab: tabs.append(Received(tab)))
    page.wait_for_function(f"(charts => charts.filter(c => c.drawn).length >= {charts})(({CHARTS})())",
                           timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000 * SETTLE_S)
    [counted] = tabs
    counted.reset()
    page.wait_for_timeout(1000 * seconds)
    result = {"bytes": counted.bytes, "redraws": counted.redraws, "by_kind": dict(counted.by_kind)}
    if screenshot:  # the app scrolls inside its own container: a window as tall as the page shows it all
        page.set_viewport_size({"width": VIEWPORT["width"], "height": 3000})
        page.wait_for_timeout(1000)
        page.screenshot(path=screenshot)
    page.close()
    return result


def table(results: dict, seconds: float, class_size: int) -> str:
    """Per page and state: the redraws counted, bytes per redraw, and per second for a viewer, measured and at
    the page's pace (bytes per redraw / REFRESH_S: what a viewer gets whose browser keeps up; a busy one redraws
    less often), and for a class: `class_size` viewers at the larger of the two."""
    lines = [f"{'page':8} {'state':9} {'redraws':>7} {'KB/redraw':>9} {'KB/s':>7} {'KB/s at pace':>12} "
             f"{f'class of {class_size}, MB/s':>18}"]
    for (page, state), result in results.items():
        per_second = result["bytes"] / seconds
        per_redraw = result["bytes"] / result["redraws"] if result["redraws"] else 0.0
        at_pace = per_redraw / REFRESH_S[page] if result["redraws"] else per_second
        lines.append(f"{page:8} {state:9} {result['redraws']:7d} {per_redraw / 1e3:9.1f} {per_second / 1e3:7.1f} "
                     f"{at_pace / 1e3:12.1f} {class_size * max(per_second, at_pace) / 1e6:18.2f}")
    return "\n".join(lines)


def kinds(results: dict) -> str:
    """Per page and state, the kinds of messages that took most of the bytes: Streamlit's ForwardMsg type, or
    the element's type for a new element (vega_lite_chart ...); ref_hash: an element the browser has already
    (Streamlit sends one of 10 KB or more, unchanged, as a reference to it)."""
    lines = []
    for (page, state), result in results.items():
        total = max(1, result["bytes"])
        shares = sorted(result["by_kind"].items(), key=lambda item: -item[1])
        lines.append(f"{page} {state}: " + ", ".join(f"{kind} {100 * size / total:.0f} %"
                                                    for kind, size in shares[:5]))
    return "\n".join(lines)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50_000, help="records of each run at the start")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--probe-every", type=int, default=25, help="MAML's probe (Config's default)")
    parser.add_argument("--pace", type=float, default=5.0, help="records a second each run appends while growing")
    parser.add_argument("--seconds", type=float, default=20.0, help="counted per page and state")
    parser.add_argument("--class-size", type=int, default=30)
    parser.add_argument("--screenshots", type=Path, help="a folder: each page's screenshot in each state")
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)  # a trainer's: start_runs gives it
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    arguments = parse(argv)
    if arguments.run_dir:
        return trainer(arguments.run_dir, runs.Run(arguments.run_dir).config(), arguments.first, arguments.pace)
    if not CHROMIUM:
        sys.exit("Debian's chromium is not installed (apt-get install chromium)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="live-bytes-") as folder:
        folder = Path(folder)
        processes = start_runs(folder / "runs", arguments)
        try:
            with served_app(folder, FEWSHOT_RUNS=str(folder / "runs"), FEWSHOT_CHECKPOINTS=str(folder / "kept"),
                            FEWSHOT_DATA=str(folder / "no-omniglot")) as url, sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for state in ("growing", "stalled", "finished"):
                    if state == "stalled":
                        for process in processes:
                            process.send_signal(signal.SIGSTOP)
                    if state == "finished":
                        finish_runs(folder / "runs", processes)
                    for page in PAGES:
                        screenshot = arguments.screenshots and arguments.screenshots / f"{page}-{state}.png"
                        results[page, state] = measure(browser, url, page, arguments.seconds, screenshot)
                        print(f"measured {page}, {state}", file=sys.stderr)
                browser.close()
        finally:
            for process in processes:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                process.wait(timeout=30)
    print(f"{arguments.iterations:,} records a run at the start, validated every {arguments.val_every}, MAML probed "
          f"every {arguments.probe_every}; growing: {arguments.pace:g} records a second a run; {arguments.seconds:g} s "
          "counted per page and state")
    print(table(results, arguments.seconds, arguments.class_size))
    print(kinds(results))


if __name__ == "__main__":
    main()
