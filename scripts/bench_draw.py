"""Milliseconds for the Draw page's work on the CPU: adapt to 5 ways x 5 shots, then classify one query
before and after adaptation. Prints the median over repeats.

    python scripts/bench_draw.py [--checkpoint PATH] [--ways 5] [--shots 5] [--steps N] [--repeats 50]

Without --checkpoint it uses the checkpoint the Draw page offers first, or a freshly initialised conv net.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fewshot.adaptation import adapt_to_supports, find_checkpoints, initial_params, probabilities  # noqa: E402
from fewshot.checkpoints import load_checkpoint  # noqa: E402
from fewshot.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the Draw page's first)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--steps", type=int, help="inner steps (default: the checkpoint's test_inner_steps)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    found = [Path(args.checkpoint)] if args.checkpoint else find_checkpoints()
    if found:
        model, metadata = load_checkpoint(found[0])
        source = str(found[0])
    else:
        model, metadata = build_model("conv", 5), {"inner_lr": 0.4, "test_inner_steps": 3}
        source = "a freshly initialised conv net (no checkpoint found)"
    ways = model.classifier.out_features
    steps = metadata["test_inner_steps"] if args.steps is None else args.steps
    support_x = torch.rand(ways * args.shots, 1, 28, 28)
    support_y = torch.arange(ways).repeat_interleave(args.shots)
    query_x = torch.rand(1, 1, 28, 28)

    def draw_page_work():
        adapted = adapt_to_supports(model, support_x, support_y, metadata["inner_lr"], steps)
        probabilities(model, initial_params(model), support_x, query_x)
        probabilities(model, adapted.params, support_x, query_x)

    draw_page_work()  # warm-up
    times = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        draw_page_work()
        times.append(1000 * (time.perf_counter() - tick))
    print(f"{source}: {ways} ways x {args.shots} shots, {steps} inner steps, {torch.get_num_threads()} CPU "
          f"threads: adapt + classify one query before and after: median {statistics.median(times):.1f} ms "
          f"(min {min(times):.1f}, max {max(times):.1f}, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
