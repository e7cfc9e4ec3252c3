"""Breaks the code on purpose, one break at a time, and checks that the tests meant to catch each break fail.

    python3 scripts/mutation_check.py            # every break
    python3 scripts/mutation_check.py --only ci  # the breaks whose name holds "ci"
    python3 scripts/mutation_check.py --only probe --only challenge  # holds either

Each break is one exact string replacement in one file, with the tests that must go red. The script copies
the repository's tracked files to a temporary folder once, applies a break there, runs those tests, restores
the file, and goes on; the working tree is never touched. It first checks that every break applies (its text
is in the file exactly once) and that the tests pass on the unbroken copy. Prints a line per break and exits
1 if a break was not caught.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fewshot.config import default_data_root  # noqa: E402


@dataclass(frozen=True)
class Break:
    name: str  # what the break does, as a reviewer would say it
    path: str  # the file, relative to the repository
    old: str  # text found exactly once in the file
    new: str  # what it becomes
    tests: tuple  # pytest node ids (file or file::test) that must fail


SHIPPED_TESTS = "tests/test_shipped_checkpoints.py"  # slow: about 7 minutes on 2 idle cores
BREAKS = [
    # Drawings (tests/test_drawing.py)
    *[Break(f"characters drawn {side} px high, not 67", "fewshot/drawing.py", "CHARACTER_SIDE = 67.0",
            f"CHARACTER_SIDE = {side}.0", ("tests/test_drawing.py",)) for side in (57, 60, 80)],
    Break("thinning returns the strokes unthinned", "fewshot/drawing.py", "    return image[1:-1, 1:-1]",
          "    return mask", ("tests/test_drawing.py",)),
    Break("thinning removes pixels that join strokes", "fewshot/drawing.py", "(connectivity == 1)",
          "(connectivity >= 1)", ("tests/test_drawing.py",)),
    # Checkpoints (tests/test_checkpoints.py)
    Break("a checkpoint ends with a pickle", "fewshot/checkpoints.py",
          "files.replace_with(Path(path), lambda tmp: tmp.write_bytes(data))",
          'files.replace_with(Path(path), lambda tmp: tmp.write_bytes(data + __import__("pickle").dumps(metadata)))',
          ("tests/test_checkpoints.py",)),
    Break("checkpoints saved with torch.save", "fewshot/checkpoints.py",
          "files.replace_with(Path(path), lambda tmp: tmp.write_bytes(data))",
          "files.replace_with(Path(path), lambda tmp: torch.save(tensors, tmp))", ("tests/test_checkpoints.py",)),
    Break("metadata that describes no model is accepted", "fewshot/checkpoints.py",
          'REQUIRED_KEYS = MODEL_KEYS + ("shots",', 'REQUIRED_KEYS = ("shots",', ("tests/test_checkpoints.py",)),
    Break("unexpected tensors are accepted", "fewshot/checkpoints.py",
          'problems += [f"unexpected {key}" for key in sorted(found - expected.keys())]', "problems += []",
          ("tests/test_checkpoints.py",)),
    # Data (tests/test_omniglot.py)
    Break("the splits' seed changed", "fewshot/omniglot.py", "generator = torch.Generator().manual_seed(1)",
          "generator = torch.Generator().manual_seed(2)", ("tests/test_omniglot.py",)),
    Break("validation characters in another order", "fewshot/omniglot.py", '"val": sorted(held_out)',
          '"val": sorted(held_out, reverse=True)', ("tests/test_omniglot.py",)),
    Break("the cache is never read", "fewshot/omniglot.py", "grey = _read_cache(cache, characters)", "grey = None",
          ("tests/test_omniglot.py",)),
    Break("a failed download does not say why", "fewshot/omniglot.py",
          'raise DatasetNotFound(f"Could not download Omniglot ({error}). {layout}") from error',
          'raise DatasetNotFound(f"Could not download Omniglot. {layout}") from error', ("tests/test_omniglot.py",)),
    Break("$FEWSHOT_DATA is ignored", "fewshot/config.py", '    if os.environ.get("FEWSHOT_DATA"):', "    if False:",
          ("tests/test_omniglot.py",)),
    Break("../shared/omniglot is searched before ./data/omniglot", "fewshot/config.py",
          'candidates = [REPO_ROOT / "data" / "omniglot", REPO_ROOT.parent / "shared" / "omniglot"]',
          'candidates = [REPO_ROOT.parent / "shared" / "omniglot", REPO_ROOT / "data" / "omniglot"]',
          ("tests/test_omniglot.py",)),
    # The app's pages (tests/test_app.py, tests/test_app_draw.py, tests/test_adaptation.py, tests/test_runs.py)
    Break("Home's Another task does nothing", "pages/home.py",
          'st.session_state.home_task = st.session_state.get("home_task", 0) + 1', "pass",
          ("tests/test_app.py::test_home_another_task_shows_a_new_task_and_a_rerun_keeps_it",)),
    Break("the Draw page adapts at half the inner learning rate", "pages/draw.py",
          "adaptation = adapt_and_classify(_model, _support_x, _support_y, _inner_lr, steps)",
          "adaptation = adapt_and_classify(_model, _support_x, _support_y, _inner_lr / 2, steps)",
          ("tests/test_app_draw.py::test_draw_adapt_and_classify_end_to_end",)),
    Break("the Draw page shows the probability before adaptation as the prediction's", "pages/draw.py",
          "({after[winner]:.0%})", "({before[winner]:.0%})",
          ("tests/test_app_draw.py::test_draw_adapt_and_classify_end_to_end",)),
    Break("the forms forget their preset on another page", "app_ui.py",
          'key=f"{prefix}_preset", persist_state="session",', 'key=f"{prefix}_preset",',
          ("tests/test_app.py::test_the_forms_preset_and_fields_are_kept_while_another_page_is_shown",)),
    Break("the Draw page's inner step is 0.999 alpha", "fewshot/adaptation.py",
          "params = {name: (params[name] - step_size(inner_lr, name, step) * grads[name])",
          "params = {name: (params[name] - 0.999 * step_size(inner_lr, name, step) * grads[name])",
          ("tests/test_adaptation.py::test_adaptation_is_mamls_first_order_inner_loop_and_query_logits",)),
    Break("the Draw page normalises the queries by their own statistics", "fewshot/adaptation.py",
          'logits = functional_call(model, params, (inputs, supports), {"step": step})',
          'logits = functional_call(model, params, (inputs,), {"step": step})',
          ("tests/test_adaptation.py::test_adaptation_is_mamls_first_order_inner_loop_and_query_logits",)),
    Break("Fill from Omniglot draws training characters", "pages/draw.py",
          'split_characters(data, metadata["split"])["test"]', 'split_characters(data, metadata["split"])["train"]',
          ("tests/test_app_draw.py::test_fill_from_omniglot_draws_characters_the_checkpoint_never_saw_then_adapts",)),
    Break("a comparison's runs get different seeds", "fewshot/runs.py",
          '"algorithm": algorithm}) for algorithm in ("maml", "fomaml")]',
          '"algorithm": algorithm, "seed": config.seed + len(algorithm)}) for algorithm in ("maml", "fomaml")]',
          ("tests/test_app.py::test_compare_page_runs_both_orders_on_one_config_side_by_side_and_stops_them",)),
    Break("a run's log gets a progress line per iteration", "fewshot/runs.py", 'TQDM_MININTERVAL="10")',
          'TQDM_MININTERVAL="0")',
          ("tests/test_runs.py::test_a_run_trains_in_its_own_process_to_the_end_and_is_evaluated",)),
    # Training, evaluation and the command line (tests/test_cli.py, test_training.py, test_evaluation.py)
    Break("evaluate --characters val evaluates the test characters", "fewshot/cli.py",
          "characters = split_characters(data, split)[args.characters]",
          'characters = split_characters(data, split)["test"]',
          ("tests/test_cli.py::test_train_then_evaluate",)),
    Break("evaluate ignores --seed", "fewshot/cli.py",
          'result = evaluate(model, sampler, inner_lr_of(metadata), steps, args.tasks, seed=args.seed,',
          'result = evaluate(model, sampler, inner_lr_of(metadata), steps, args.tasks, seed=TEST_SEED,',
          ("tests/test_cli.py::test_train_then_evaluate",)),
    Break("train --resume starts the run again", "fewshot/cli.py", "train(config, run_dir, resume=args.resume)",
          "train(config, run_dir, resume=False)",
          ("tests/test_cli.py::test_train_resume_continues_a_run_with_its_saved_options_and_a_new_learning_rate",)),
    Break("evaluation takes at most one inner step", "fewshot/evaluation.py",
          "maml.task_losses(model, group, inner_lr, steps, first_order=True,",
          "maml.task_losses(model, group, inner_lr, min(steps, 1), first_order=True,",
          ("tests/test_evaluation.py",)),
    Break("the final evaluation uses the validation characters", "fewshot/training.py",
          'finish(run_dir, model, config, samplers["test"], progress, saver.lock, inner_lr)',
          'finish(run_dir, model, config, samplers["val"], progress, saver.lock, inner_lr)',
          ("tests/test_training.py::test_a_run_writes_its_directory",)),
    Break("validation tasks drawn from the training characters", "fewshot/training.py",
          'val_batch = samplers["val"].sample(', 'val_batch = samplers["train"].sample(',
          ("tests/test_training.py::test_each_part_of_a_run_draws_its_tasks_from_its_own_characters",)),
    Break("augmentation of every task, not only training's", "fewshot/training.py",
          'augment=config.augment if name == "train" else "none")', "augment=config.augment)",
          ("tests/test_training.py::test_each_part_of_a_run_draws_its_tasks_from_its_own_characters",)),
    Break("a resumed run validates on other tasks", "fewshot/training.py",
          "seed=task_seed(config.seed, 0)).to(device=device)", "seed=task_seed(config.seed, start)).to(device=device)",
          ("tests/test_training.py::test_stop_then_resume_gives_the_uninterrupted_run",)),
    Break("a resume forgets Adam's moments", "fewshot/checkpoints.py", 'optimizer.load_state_dict({"state": state,',
          'optimizer.load_state_dict({"state": {},',
          ("tests/test_training.py::test_stop_then_resume_gives_the_uninterrupted_run",)),
    # The model card (tests/test_shipped_checkpoints.py)
    Break("evaluate --transductive uses the support set's statistics", "fewshot/evaluation.py",
          "transductive=transductive)\n                   for group",
          "transductive=False)\n                   for group",
          (SHIPPED_TESTS,)),
    Break("evaluate always uses the queries' statistics", "fewshot/evaluation.py",
          "transductive=transductive)\n                   for group",
          "transductive=True)\n                   for group",
          (SHIPPED_TESTS,)),
    Break("the card's 20w1s queries row 1.5 points high", "checkpoints/README.md",
          "| 90.35 ± 0.31 | 91.04 ± 0.30 |", "| 90.35 ± 0.31 | 92.54 ± 0.30 |",
          (f"{SHIPPED_TESTS}::test_card_rows_and_their_protocols_gap_agree_with_their_first_tasks",)),
    Break("the card's FOMAML seen-alphabets support row 1.5 points low", "checkpoints/README.md",
          "| 95.59 ± 0.50 |", "| 94.09 ± 0.50 |",
          (f"{SHIPPED_TESTS}::test_card_rows_and_their_protocols_gap_agree_with_their_first_tasks",)),
    # First against second order, and the Challenge page (tests/test_probe.py, test_challenge.py, test_scoreboard.py)
    Break("the probe's first-order gradient is second order", "fewshot/probe.py",
          "meta_gradient(model, batch, inner_lr, steps, True, tasks_at_once)",
          "meta_gradient(model, batch, inner_lr, steps, False, tasks_at_once)", ("tests/test_probe.py",)),
    Break("the probe's time counted in the run's seconds", "fewshot/training.py",
          "elapsed = time.perf_counter() - tick - probe_seconds", "elapsed = time.perf_counter() - tick",
          ("tests/test_probe.py",)),
    Break("the probe's norm ratio inverted", "fewshot/probe.py", '"norm_ratio": (g1_norm / g2_norm).item()',
          '"norm_ratio": (g2_norm / g1_norm).item()', ("tests/test_probe.py",)),
    Break("the challenge ignores its one-alphabet option", "fewshot/challenge.py", "    if level.one_alphabet:\n",
          "    if False:\n", ("tests/test_challenge.py",)),
    Break("the challenge draws the training alphabets", "fewshot/challenge.py",
          'chosen = split_characters(data, SPLIT)["test"]', 'chosen = split_characters(data, SPLIT)["train"]',
          ("tests/test_challenge.py",)),
    Break("a session may answer a query twice", "fewshot/scoreboard.py",
          "UNIQUE (session, ways, one_alphabet, seed, task, query))", "CHECK (1))", ("tests/test_scoreboard.py",)),
    Break("the scoreboard takes more answers than its limit", "fewshot/scoreboard.py",
          "if stored + len(rows) > MAX_ROWS:", "if False:", ("tests/test_scoreboard.py",)),
    # One server for a class (tests/test_limits.py, test_runs.py, test_access.py, test_app_class.py, test_ray_jobs.py)
    Break("the queue starts runs beyond the limit", "fewshot/runs.py",
          "free = limit - sum(run.is_running() for run in listed)", "free = limit",
          ("tests/test_limits.py", "tests/test_app_class.py")),
    Break("a run that died without a word reads as failed, not interrupted", "fewshot/runs.py",
          "if _has_process(launch) and not (self.path / ENDED).exists():", "if False:",
          ("tests/test_runs.py", "tests/test_app_class.py")),
    Break("any session stops any run", "fewshot/access.py", "return may_manage(has_key) or owner == session",
          "return True", ("tests/test_access.py", "tests/test_app_class.py")),
    Break("the instructor key compared with ==", "fewshot/access.py",
          "hmac.compare_digest(entered.strip().encode(), key.encode())", "entered.strip() == key",
          ("tests/test_access.py",)),
    Break("a Ray job is killed 3 s after its stop signal", "fewshot/ray_jobs.py", '"RAY_JOB_STOP_WAIT_TIME_S": "120"',
          '"RAY_JOB_STOP_WAIT_TIME_S": "3"', ("tests/test_ray_jobs.py",)),
    # Within one alphabet (tests/test_tasks.py, tests/test_cli.py)
    Break("within one alphabet, tasks draw from every alphabet", "fewshot/tasks.py",
          "            pool = self.pools[(seed + task) % len(self.pools)]\n",
          "            pool = list(range(len(self.characters)))\n", ("tests/test_tasks.py", "tests/test_cli.py")),
    Break("evaluate --within-alphabet turns its characters", "fewshot/cli.py", "rotations=not args.within_alphabet)",
          "rotations=True)", ("tests/test_cli.py",)),
    # The Draw page under load, per-step batch norm (tests/test_adaptation.py, tests/test_app.py, test_per_step_bn.py)
    Break("a new query is classified at theta, not at the adapted theta'", "fewshot/adaptation.py",
          "query_logits(model, adaptation.params, support_x, query_x", "query_logits(model, theta, support_x, query_x",
          ("tests/test_adaptation.py",)),
    Break("Streamlit collects all garbage after every script run", ".streamlit/config.toml", "postScriptGC = false",
          "postScriptGC = true",
          ("tests/test_app.py::test_the_server_does_not_collect_all_garbage_after_every_script_run",)),
    Break("per-step batch norm uses the first step's row at every step", "fewshot/models.py",
          "weight[min(step, self.steps - 1)], bias[min(step, self.steps - 1)]", "weight[0], bias[0]",
          ("tests/test_per_step_bn.py",)),
    # Tasks adapted a group at a time (tests/test_maml.py, tests/test_training.py)
    Break("each group's meta-gradient is its mean, not its share of the meta-batch's", "fewshot/maml.py",
          "(losses.sum() / len(batch)).backward()", "losses.mean().backward()", ("tests/test_maml.py",)),
    Break("training adapts the whole meta-batch at once", "fewshot/training.py",
          "meta_backward_of(config.engine, tasks_at_once(config, device))", "meta_backward_of(config.engine)",
          ("tests/test_training.py",)),
    Break("the probe's first-order gradient takes each group's mean", "fewshot/probe.py",
          "torch.autograd.grad(losses.sum() / len(batch), ", "torch.autograd.grad(losses.mean(), ",
          ("tests/test_probe.py",)),
    Break("validation adapts all its tasks at once on a CPU", "fewshot/evaluation.py",
          'size = CPU_GROUP if batch.support_x.device.type == "cpu" else 0', "size = 0",
          ("tests/test_training.py",)),
]


def copy_repository(target: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def run_tests(copy: Path, tests: tuple) -> bool:
    """Whether the tests pass in the copy (slow ones included: a break may be caught by one)."""
    environment = dict(os.environ, FEWSHOT_DATA=default_data_root())
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                            cwd=copy, env=environment, capture_output=True, text=True)
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only the breaks whose name contains this (may be given more than once)")
    args = parser.parse_args()
    breaks = [b for b in BREAKS if not args.only or any(text in b.name for text in args.only)]
    copy = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    copy_repository(copy)
    for b in breaks:
        count = (copy / b.path).read_text().count(b.old)
        if count != 1:
            sys.exit(f"break {b.name!r}: its text is in {b.path} {count} times, not once; update it")
    tests = tuple(dict.fromkeys(test for b in breaks for test in b.tests))
    if not run_tests(copy, tests):
        sys.exit("the tests fail on the unbroken code: fix them first")
    missed = []
    for b in breaks:
        original = (copy / b.path).read_text()
        (copy / b.path).write_text(original.replace(b.old, b.new))
        tick = time.perf_counter()
        caught = not run_tests(copy, b.tests)
        (copy / b.path).write_text(original)
        print(f"{'caught' if caught else 'MISSED'}  {b.name}  ({', '.join(b.tests)}; "
              f"{time.perf_counter() - tick:.0f} s)", flush=True)
        if not caught:
            missed.append(b.name)
    shutil.rmtree(copy)
    print(f"{len(breaks) - len(missed)} caught, {len(missed)} missed")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
