"""The Draw page's adapt + classify beside another session's busy Python thread, at several of Python's switch
intervals (how long a thread may keep the interpreter lock while another waits): why app.py lowers it.

    python3 scripts/bench_switch_interval.py [--repeats 15]

A torch call releases the lock and must take it back after; while another thread runs Python, that waits up to
one switch interval. The adaptation makes hundreds of such calls. One torch thread, the first shipped checkpoint.
"""

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fewshot.adaptation import adapt_and_classify  # noqa: E402
from fewshot.checkpoints import load_checkpoint  # noqa: E402
from fewshot.config import REPO_ROOT  # noqa: E402

INTERVALS_S = (0.005, 0.001, 0.0002)  # Python's default, and two lower ones


def busy(stop: threading.Event) -> None:
    """Another session's script: Python bytecode, without a pause."""
    total = 0
    while not stop.is_set():
        for i in range(10_000):
            total += i


def adapt_ms(model, metadata, repeats: int) -> float:
    ways = model.classifier.out_features
    support_x, support_y = torch.rand(ways * 5, 1, 28, 28), torch.arange(ways).repeat_interleave(5)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        adapt_and_classify(model, support_x, support_y, metadata["inner_lr"], metadata["test_inner_steps"],
                           torch.rand(1, 1, 28, 28))
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, metadata = load_checkpoint(sorted((REPO_ROOT / "checkpoints").glob("*.safetensors"))[0])
    adapt_ms(model, metadata, 2)  # warm-up
    for interval in INTERVALS_S:
        sys.setswitchinterval(interval)
        alone = adapt_ms(model, metadata, args.repeats)
        stop = threading.Event()
        other = threading.Thread(target=busy, args=(stop,))
        other.start()
        beside = adapt_ms(model, metadata, args.repeats)
        stop.set()
        other.join()
        print(f"switch interval {1000 * interval:.1f} ms: adapt + classify {alone:.0f} ms alone, "
              f"{beside:.0f} ms beside a busy thread (medians of {args.repeats})", flush=True)


if __name__ == "__main__":
    main()
