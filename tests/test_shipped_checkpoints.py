"""Every checkpoint in checkpoints/ loads, matches the model card's tables, and (with the data) its accuracy."""

import json
import math
import re
from pathlib import Path

import pytest

from fewshot import metrics
from fewshot.checkpoints import load_checkpoint
from fewshot.evaluation import evaluate
from fewshot.omniglot import split_characters
from fewshot.tasks import TaskSampler

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
RECHECK_TASKS = 100


def card_table(heading: str) -> list:
    """The rows of the markdown table under `## heading` in checkpoints/README.md, as dicts."""
    text = (CHECKPOINTS / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip().strip("`") for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_every_shipped_file_is_in_the_card_and_back():
    shipped = {path.name for path in CHECKPOINTS.glob("*.safetensors")}
    assert shipped, "no checkpoint shipped"
    assert shipped == {row["file"] for row in card_table("Models")}
    assert all(path.stat().st_size < 2_000_000 for path in CHECKPOINTS.glob("*.safetensors"))


@pytest.mark.parametrize("row", card_table("Models"), ids=lambda row: row["file"])
def test_metadata_matches_the_card(row):
    _, metadata = load_checkpoint(CHECKPOINTS / row["file"])
    channels, blocks = map(int, re.fullmatch(r"conv (\d+)x(\d+)", row["backbone"]).groups())
    assert (metadata["algorithm"], metadata["backbone"], metadata["channels"], metadata["blocks"]) == (
        row["algorithm"], "conv", channels, blocks)
    assert (metadata["ways"], metadata["shots"], metadata["split"], metadata["iterations"]) == (
        int(row["ways"]), int(row["trained shots"]), row["split"], int(row["iterations"]))
    assert metadata["inner_lr"] == float(row["inner lr"]) and metadata["inner_steps"] == int(row["inner steps"])


@pytest.mark.parametrize("run", sorted((CHECKPOINTS / "runs").iterdir()), ids=lambda path: path.name)
def test_shipped_curves_are_those_of_the_shipped_checkpoints(run):
    """checkpoints/runs/<name>/ holds the run that made <name>.safetensors, for the Compare page."""
    _, metadata = load_checkpoint(CHECKPOINTS / f"{run.name}.safetensors")
    config, records = json.loads((run / "config.json").read_text()), metrics.read(run / "metrics.jsonl")[0]
    assert all(config[key] == metadata[key] for key in ("algorithm", "ways", "shots", "inner_lr", "seed"))
    assert config["iterations"] == metadata["iterations"] == records[-1]["iteration"] == len(records)
    assert json.loads((run / "evaluation.json").read_text()) == metadata["accuracy"][f"{metadata['ways']}w1s"]


def row_id(row: dict) -> str:
    return f"{row['file']}-{row['task']}-{row.get('characters', 'test')}-{row['batch norm']}"


@pytest.mark.parametrize("row", [row for row in card_table("Accuracy") if row["batch norm"] == "support"], ids=row_id)
def test_card_accuracy_is_the_recorded_evaluation(row):
    """The app's protocol rows are what `evaluate --record` wrote into the checkpoint."""
    recorded = load_checkpoint(CHECKPOINTS / row["file"])[1]["accuracy"][row["task"]]
    assert (f"{100 * recorded['accuracy']:.2f}", f"±{100 * recorded['ci95']:.2f}") == (
        row["accuracy %"], row["95 % interval"])
    assert (recorded["tasks"], recorded["queries"], recorded["inner_steps"]) == (
        int(row["tasks"]), int(row["queries"]), int(row["inner steps"]))


@pytest.mark.slow
@pytest.mark.parametrize("row", card_table("Accuracy") + card_table("Seen alphabets, unseen characters"), ids=row_id)
def test_accuracy_is_consistent_with_the_card(row, omniglot):
    """The first 100 of the card's 600 tasks: within the card's interval, widened for 100 tasks."""
    model, metadata = load_checkpoint(CHECKPOINTS / row["file"])
    ways, shots = map(int, re.fullmatch(r"(\d+)w(\d+)s", row["task"]).groups())
    split, characters = row.get("characters", f"{metadata['split']}/test").split("/")
    sampler = TaskSampler(omniglot.ink, split_characters(omniglot, split)[characters], ways, shots,
                          int(row["queries"]))
    result = evaluate(model, sampler, metadata["inner_lr"], int(row["inner steps"]), tasks=RECHECK_TASKS,
                      transductive=row["batch norm"] == "queries")
    card_accuracy, card_ci = float(row["accuracy %"]) / 100, float(row["95 % interval"].lstrip("±")) / 100
    widened = max(card_ci, 0.005) * math.sqrt(int(row["tasks"]) / RECHECK_TASKS) * 1.5
    assert abs(result.accuracy - card_accuracy) <= widened, (result.accuracy, card_accuracy, widened)
