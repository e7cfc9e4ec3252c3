"""Every checkpoint in checkpoints/ loads, matches the model card's table, and (with the data) its accuracy."""

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from fewshot import metrics
from fewshot.checkpoints import load_checkpoint
from fewshot.evaluation import TEST_SEED, adapted_task_metrics, confidence_interval, evaluate
from fewshot.omniglot import split_characters
from fewshot.tasks import TaskSampler

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
CARD = CHECKPOINTS / "README.md"
EXACT = ("maml-conv-5way.safetensors", "5w1s", "lake/test")  # the Draw page's model at its 97 % target's task
FLOAT_NOISE = 0.02  # points: another CPU may flip a near-tied query or two (one of the 15,000 moves 0.007 points)
Z = 3.5  # standard errors a first-tasks mean may stray from the card's: a true card fails 1 row in 2,000
MAX_TOLERANCE = 0.7  # points, under 0.75: then a row 1.5 points off always fails, however lucky the first tasks
# The card's table has a row per file. Its "what it is" cell starts with the file's metadata, in these words:
WHAT_IT_IS = re.compile(r"(?P<algorithm>\w+), conv (?P<channels>\d+)x(?P<blocks>\d+), (?P<ways>\d+)-way "
                        r"(?P<shots>\d+)-shot, (?P<split>\w+) split, (?P<iterations>\d+) iterations, "
                        r"(?P<inner_steps>\d+) inner steps? of (?P<inner_lr>[\d.]+)[;.]")
# Each other column holds a figure, "97.17 ± 0.36" (FIGURE), named by its characters, shots and protocol, or the
# MAML paper's figure (not checked).
FIGURE_COLUMN = re.compile(r"(?P<characters>[a-z ]+) (?P<shots>\d+)-shot, (?P<protocol>app|paper's) %")
PAPER_COLUMN = re.compile(r"MAML paper \d+-shot %")
CHARACTERS = {"unseen alphabets": ("test", False), "seen alphabets": ("val", False),  # (characters, one alphabet)
              "one unseen alphabet": ("test", True)}
PROTOCOLS = {"app": "support", "paper's": "queries"}  # whose statistics batch norm normalises the queries with
FIGURE = re.compile(r"(?P<accuracy>\d+\.\d\d) ± (?P<ci95>\d+\.\d\d)")
EVALUATION = re.compile(r"Every figure: (?P<tasks>\d+) tasks, (?P<queries>\d+) queries per class, "
                        r"(?P<inner_steps>\d+) test-time inner steps")


def card_table() -> list:
    """The rows of the card's table (the first markdown table of checkpoints/README.md), as dicts by header."""
    lines = CARD.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = [[cell.strip().strip("`") for cell in line.strip("|").split("|")]
             for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start:])]
    header, rows = table[0], table[2:]
    assert all(len(row) == len(header) for row in rows), "a row of the card's table has too few or too many cells"
    return [dict(zip(header, row)) for row in rows]


def card_models() -> list:
    """Each file's metadata as its row states it: file, algorithm, channels, blocks, ways, shots, split, ..."""
    models = []
    for row in card_table():
        stated = WHAT_IT_IS.match(row["what it is"])
        assert stated, f"{row['file']}: {row['what it is']!r} does not start as WHAT_IT_IS says"
        models.append({"file": row["file"], **stated.groupdict()})
    return models


def card_figures() -> list:
    """Every figure of the card's table, as a dict: its file, task (the file's ways), characters, batch norm
    (protocol), whether within one alphabet, accuracy % and 95 % interval as the card writes them, and the tasks,
    queries and inner steps the card says every figure was measured with."""
    measured = EVALUATION.search(CARD.read_text())
    assert measured, "the card does not say how its figures were measured (EVALUATION)"
    models = {model["file"]: model for model in card_models()}
    figures = []
    for row in card_table():
        model = models[row["file"]]
        for column, cell in row.items():
            if column in ("file", "what it is") or PAPER_COLUMN.fullmatch(column):
                continue
            kind, figure = FIGURE_COLUMN.fullmatch(column), FIGURE.fullmatch(cell)
            assert kind and kind["characters"] in CHARACTERS, f"unknown column {column!r}"
            assert figure, f"{row['file']}, {column}: {cell!r} is no figure"
            characters, within = CHARACTERS[kind["characters"]]
            figures.append({"file": row["file"], "task": f"{model['ways']}w{kind['shots']}s",
                            "characters": f"{model['split']}/{characters}", "within one alphabet": within,
                            "batch norm": PROTOCOLS[kind["protocol"]], "accuracy %": figure["accuracy"],
                            "95 % interval": figure["ci95"], "tasks": measured["tasks"],
                            "queries": measured["queries"], "inner steps": measured["inner_steps"]})
    return figures


def test_every_shipped_file_is_in_the_card_and_back():
    shipped = {path.name for path in CHECKPOINTS.glob("*.safetensors")}
    assert shipped, "no checkpoint shipped"
    assert shipped == {row["file"] for row in card_table()}
    assert all(path.stat().st_size < 2_000_000 for path in CHECKPOINTS.glob("*.safetensors"))


def test_the_cards_links_lead_to_files():
    """The card links the details it moved out (checkpoints/runs/HISTORY.md); a link must not dangle."""
    links = re.findall(r"\]\(([^)#]+)\)", CARD.read_text())
    assert links and all((CHECKPOINTS / link).is_file() for link in links), links


@pytest.mark.parametrize("stated", card_models(), ids=lambda stated: stated["file"])
def test_metadata_matches_the_card(stated):
    _, metadata = load_checkpoint(CHECKPOINTS / stated["file"])
    assert (metadata["algorithm"], metadata["backbone"], metadata["channels"], metadata["blocks"]) == (
        stated["algorithm"].lower(), "conv", int(stated["channels"]), int(stated["blocks"]))
    assert (metadata["ways"], metadata["shots"], metadata["split"], metadata["iterations"]) == (
        int(stated["ways"]), int(stated["shots"]), stated["split"], int(stated["iterations"]))
    assert metadata["inner_lr"] == float(stated["inner_lr"]) and metadata["inner_steps"] == int(stated["inner_steps"])


@pytest.mark.parametrize("run", sorted(path for path in (CHECKPOINTS / "runs").iterdir() if path.is_dir()),
                         ids=lambda path: path.name)
def test_shipped_curves_are_those_of_the_shipped_checkpoints(run):
    """checkpoints/runs/<name>/ holds the run that made <name>.safetensors, for the Compare page."""
    _, metadata = load_checkpoint(CHECKPOINTS / f"{run.name}.safetensors")
    config, records = json.loads((run / "config.json").read_text()), metrics.read(run / "metrics.jsonl")[0]
    assert all(config[key] == metadata[key] for key in ("algorithm", "ways", "shots", "inner_lr", "seed"))
    assert config["iterations"] == metadata["iterations"] == records[-1]["iteration"] == len(records)
    assert json.loads((run / "evaluation.json").read_text()) == metadata["accuracy"][f"{metadata['ways']}w1s"]


def row_id(row: dict) -> str:
    kind = "-within-alphabet" if row["within one alphabet"] else ""
    return f"{row['file']}-{row['task']}-{row['characters']}{kind}-{row['batch norm']}"


@pytest.mark.parametrize("row", [row for row in card_figures() if row["batch norm"] == "support" and not
                                 row["within one alphabet"] and row["characters"].endswith("/test")], ids=row_id)
def test_card_accuracy_is_the_recorded_evaluation(row):
    """The app's protocol figures on unseen alphabets are what `evaluate --record` wrote into the checkpoint."""
    recorded = load_checkpoint(CHECKPOINTS / row["file"])[1]["accuracy"][row["task"]]
    assert (f"{100 * recorded['accuracy']:.2f}", f"{100 * recorded['ci95']:.2f}") == (
        row["accuracy %"], row["95 % interval"])
    assert (recorded["split"], recorded["tasks"], recorded["queries"], recorded["inner_steps"]) == (
        row["characters"], int(row["tasks"]), int(row["queries"]), int(row["inner steps"]))


def accuracy_rows() -> dict:
    """The card's figures of tasks from any alphabet, by (file, task, characters): {"support": row, "queries": row},
    the same tasks."""
    groups = {}
    for row in card_figures():
        if not row["within one alphabet"]:
            groups.setdefault((row["file"], row["task"], row["characters"]), {})[row["batch norm"]] = row
    assert all(set(pair) == {"support", "queries"} for pair in groups.values()), groups
    return groups


def within_alphabet_rows() -> list:
    """The card's figures of tasks within one alphabet."""
    return [row for row in card_figures() if row["within one alphabet"]]


def test_every_model_has_a_within_alphabet_figure_in_the_apps_protocol_at_its_task():
    rows = within_alphabet_rows()
    assert sorted(row["file"] for row in rows) == sorted(row["file"] for row in card_table())
    for row in rows:
        assert row["batch norm"] == "support" and row["characters"].endswith("/test") and int(row["tasks"]) >= 600
        _, metadata = load_checkpoint(CHECKPOINTS / row["file"])
        assert row["task"] == f"{metadata['ways']}w1s" and int(row["inner steps"]) == metadata["test_inner_steps"]


def card_sampler(row: dict, omniglot):
    """The row's checkpoint, its metadata and a sampler of the row's tasks (`evaluate` draws them from TEST_SEED);
    within one alphabet, upright characters, as `evaluate --within-alphabet` draws them."""
    model, metadata = load_checkpoint(CHECKPOINTS / row["file"])
    ways, shots = map(int, re.fullmatch(r"(\d+)w(\d+)s", row["task"]).groups())
    split, characters = row["characters"].split("/")
    chosen = split_characters(omniglot, split)[characters]
    within = row["within one alphabet"]
    sampler = TaskSampler(omniglot.ink, chosen, ways, shots, int(row["queries"]), rotations=not within,
                          alphabets=[omniglot.alphabet(c) for c in chosen] if within else None)
    return model, metadata, sampler


@pytest.mark.slow
@pytest.mark.parametrize("row", [*accuracy_rows()[EXACT].values(), *within_alphabet_rows()], ids=row_id)
def test_card_rows_are_reproduced_on_their_own_tasks(row, omniglot):
    """`evaluate` draws the same tasks from TEST_SEED every time, so it gives the card's figures again, up to float
    rounding: a check far tighter than any interval (the two protocols differ by 0.71 points here). The rows
    within one alphabet are checked so too: their tasks vary so much that first_tasks_for would take 500 or 550
    of their 600 tasks."""
    model, metadata, sampler = card_sampler(row, omniglot)
    result = evaluate(model, sampler, metadata["inner_lr"], int(row["inner steps"]), tasks=int(row["tasks"]),
                      transductive=row["batch norm"] == "queries")
    assert result.transductive == (row["batch norm"] == "queries")
    assert abs(100 * result.accuracy - float(row["accuracy %"])) <= FLOAT_NOISE, (result, row)
    assert abs(100 * result.ci95 - float(row["95 % interval"])) <= FLOAT_NOISE, (result, row)


def tolerance(row: dict, first_tasks: int) -> float:
    """Z standard errors, in points, of the mean of the first tasks minus the mean of all the row's tasks: the
    first tasks are a random sample, without replacement, of the row's (per-task spread from its interval)."""
    tasks = int(row["tasks"])
    per_task_sd = float(row["95 % interval"]) / 1.96 * math.sqrt(tasks)
    return Z * per_task_sd * math.sqrt(max(1 / first_tasks - 1 / tasks, 0))


def first_tasks_for(pair: dict) -> int:
    """The fewest first tasks, in fifties, that bring both rows' tolerance within MAX_TOLERANCE."""
    first_tasks = 50
    while any(tolerance(row, first_tasks) > MAX_TOLERANCE for row in pair.values()):
        first_tasks += 50
    return first_tasks


@pytest.mark.slow
@pytest.mark.parametrize("key", [key for key in accuracy_rows() if key != EXACT], ids="-".join)
def test_card_rows_and_their_protocols_gap_agree_with_their_first_tasks(key, omniglot):
    """Both rows on the card's first tasks, each within its tolerance (MAX_TOLERANCE at most); at one shot, where
    the card says the queries' own statistics add 0.6 to 1.5 points, the gap measured task by task on the same
    tasks (a paired difference, far less noisy than either row) excludes 0 and agrees with the card's."""
    pair = accuracy_rows()[key]
    first_tasks = first_tasks_for(pair)
    model, metadata, sampler = card_sampler(pair["support"], omniglot)
    accuracies = {protocol: 100 * adapted_task_metrics(
        model, sampler, first_tasks, TEST_SEED, metadata["inner_lr"], int(row["inner steps"]),
        transductive=protocol == "queries")[1] for protocol, row in pair.items()}
    for protocol, row in pair.items():
        measured, card = accuracies[protocol].mean().item(), float(row["accuracy %"])
        assert abs(measured - card) <= tolerance(row, first_tasks), (protocol, first_tasks, measured, card,
                                                                     tolerance(row, first_tasks))
    if sampler.shots == 1:
        gap = accuracies["queries"] - accuracies["support"]
        card_gap = float(pair["queries"]["accuracy %"]) - float(pair["support"]["accuracy %"])
        mean, half_width = confidence_interval(gap)
        allowed = Z * gap.std().item() * math.sqrt(1 / first_tasks - 1 / int(pair["support"]["tasks"]))
        assert mean - half_width > 0 and abs(mean - card_gap) <= allowed, (first_tasks, mean, half_width, card_gap)
