"""Milliseconds for the Draw page's work on the CPU: adapt to 5 ways x 5 shots, then classify one query
before and after adaptation. Prints the median over repeats.

    python scripts/bench_draw.py [--checkpoint PATH] [--shots 5] [--steps N] [--repeats 50] [--threads N]

Without --checkpoint it uses the checkpoint the Draw page offers first, or a freshly initialised conv net.
"""

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fewshot.adaptation import adapt_and_classify, find_checkpoints, idle_threads, ways_of  # noqa: E402
from fewshot.checkpoints import load_checkpoint  # noqa: E402
from fewshot.memory import keep_freed_memory  # noqa: E402
from fewshot.models import build_model  # noqa: E402
from fewshot.runs import checkpoints_dir, runs_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the Draw page's first)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--steps", type=int, help="inner steps (default: the checkpoint's test_inner_steps)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: the idle cores, as the Draw page)")
    args = parser.parse_args()

    keep_freed_memory()  # as the app does
    if args.threads:
        torch.set_num_threads(args.threads)
    found = [Path(args.checkpoint)] if args.checkpoint else find_checkpoints(checkpoints_dir(), runs_root())
    if found:
        model, metadata = load_checkpoint(found[0])
        source = str(found[0])
    else:
        model, metadata = build_model("conv", 5), {"inner_lr": 0.4, "test_inner_steps": 3}
        source = "a freshly initialised conv net (no checkpoint found)"
    ways = ways_of(model)
    steps = metadata["test_inner_steps"] if args.steps is None else args.steps
    support_x = torch.rand(ways * args.shots, 1, 28, 28)
    support_y = torch.arange(ways).repeat_interleave(args.shots)
    query_x = torch.rand(1, 1, 28, 28)

    threads = set()

    def draw_page_work():
        with nullcontext() if args.threads else idle_threads():  # as the Draw page does
            threads.add(torch.get_num_threads())
            adapt_and_classify(model, support_x, support_y, metadata["inner_lr"], steps, query_x)

    draw_page_work()  # warm-up
    wall, cpu = [], []
    for _ in range(args.repeats):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        draw_page_work()
        wall.append(1000 * (time.perf_counter() - tick))
        cpu.append(1000 * (time.process_time() - cpu_tick))
    print(f"{source}\n{ways} ways x {args.shots} shots, {steps} inner steps, one query, "
          f"{'/'.join(map(str, sorted(threads)))} CPU thread(s), {args.repeats} repeats:\n"
          f"adapt + classify before and after: median {statistics.median(wall):.1f} ms "
          f"(min {min(wall):.1f}); CPU time median {statistics.median(cpu):.1f} ms, all threads together")
    if os.getloadavg()[0] > os.cpu_count() / 2:
        print(f"note: the machine is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs): "
              "wall times are inflated")


if __name__ == "__main__":
    main()
