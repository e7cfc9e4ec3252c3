"""How long a session's Adapt waits while another session adapts a large model: short adaptations (the shipped
5-way model, 1 drawing per class, 3 steps) in `sessions` threads, in a loop, beside one long adaptation (a
256 x 6 model, 20 classes x 5 drawings, 50 steps), as the server's sessions share its models.

    python3 scripts/shared_model_latency.py [--sessions 1] [--whole]

--whole locks the model for a whole adaptation, as before (fewshot.adaptation.MODEL_IN_USE: now a step).
"""

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fewshot import adaptation  # noqa: E402
from fewshot.checkpoints import load_checkpoint  # noqa: E402
from fewshot.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1, help="threads doing short adaptations")
    parser.add_argument("--whole", action="store_true", help="one lock for a whole adaptation, as before")
    args = parser.parse_args()
    adapt = adaptation.adapt_and_classify
    if args.whole:
        adaptation.MODEL_IN_USE = threading.RLock()  # re-entered by each step's turn
        adapt = adaptation.one_at_a_time(adapt)
    small, _ = load_checkpoint(REPO / "checkpoints" / adaptation.DEFAULT_CHECKPOINT)
    torch.manual_seed(0)
    large = build_model("conv", ways=20, channels=256, blocks=6)
    large_x, large_y = torch.rand(100, 1, 28, 28), torch.arange(20).repeat_interleave(5)
    small_x, small_y = torch.rand(5, 1, 28, 28), torch.arange(5)
    adapt(large, large_x[::5], large_y[::5], 0.01, 1)  # torch.func's first call is slow: not timed
    alone = timed(lambda: adapt(small, small_x, small_y, 0.4, 3, small_x[:1]))

    long = threading.Thread(target=adapt, args=(large, large_x, large_y, 0.01, 50))
    beside = []

    def session():
        while long.is_alive():
            beside.append(timed(lambda: adapt(small, small_x, small_y, 0.4, 3, small_x[:1])))
    tick = time.perf_counter()
    long.start()
    sessions = [threading.Thread(target=session) for _ in range(args.sessions)]
    for thread in sessions:
        thread.start()
    for thread in sessions + [long]:
        thread.join()
    print(f"{'whole adaptation' if args.whole else 'one step'} a turn, {args.sessions} session(s): a short "
          f"adaptation alone {1000 * alone:.0f} ms; beside the long one ({time.perf_counter() - tick:.1f} s) "
          f"{len(beside)} of them, median {1000 * statistics.median(beside):.0f} ms, at most "
          f"{1000 * max(beside):.0f} ms")


def timed(work) -> float:
    tick = time.perf_counter()
    work()
    return time.perf_counter() - tick


if __name__ == "__main__":
    main()
