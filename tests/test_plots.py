"""The live charts' rows (fewshot/plots.py): what every viewer of the Train and Compare pages is sent at every
redraw, however long the runs."""

import collections
import json

import pytest

from fake_runs import record
from fewshot import plots

LONG = 100_050  # iterations: the last record is no validation's


def validated(iteration: int) -> dict:
    return {**record(iteration), "val_loss": 2.0 / iteration, "val_accuracy": 0.6}


def probed(iteration: int) -> dict:
    numbers = {"cosine": 0.9, "norm_ratio": 1.0, "dropped_norm": 0.1, "g2_norm": 1.0}
    return {**record(iteration), "probe": {**numbers, "layers": {"block 1": numbers, "classifier": numbers}}}


def long_run(iterations: int = LONG) -> list:
    """A run's records, validated every 100 iterations and probed every 25, as the form's defaults and
    Config's have it."""
    return [validated(i) if i % 100 == 0 else probed(i) if i % 25 == 0 else record(i) for i in range(1, iterations + 1)]


def xs_by_series(rows: list) -> dict:
    by_series = collections.defaultdict(list)
    for row in rows:
        by_series[row["series"]].append(row["x"])
    return by_series


@pytest.mark.parametrize("x", list(plots.X_AXES))
def test_a_long_runs_curves_are_bounded_and_keep_its_first_and_last_records(x):
    records = long_run()
    key = plots.X_AXES[x]
    validations = [r for r in records if "val_loss" in r]
    for metric in ("loss", "accuracy"):
        spec, rows = plots.training_curves({"": records}, metric, x)
        curves = xs_by_series(rows)
        assert 100 <= len(curves["meta-train"]) <= plots.MAX_POINTS  # a curve still, not a handful of points
        assert 50 <= len(curves["validation"]) <= plots.MAX_VALIDATION_POINTS
        assert curves["meta-train"][0] == records[0][key] and curves["meta-train"][-1] == records[-1][key]
        assert curves["validation"][0] == validations[0][key] and curves["validation"][-1] == validations[-1][key]
        assert curves["meta-train"] == sorted(curves["meta-train"])  # in order: a line, not a scribble


def test_a_short_runs_every_record_is_drawn():
    records = long_run(plots.MAX_POINTS)
    spec, rows = plots.training_curves({"": records}, "loss")
    assert xs_by_series(rows)["meta-train"] == [r["iteration"] for r in records]


def test_the_points_drawn_stay_put_as_a_run_grows():
    """A live chart redrawn with one record more: the same points, the latest last. (Thinning that shifted every
    point by one record at each redraw drew the noisy meta-train curve anew every second.)"""
    records = long_run()
    before = xs_by_series(plots.training_curves({"": records[:-1]}, "loss")[1])
    after = xs_by_series(plots.training_curves({"": records}, "loss")[1])
    assert after["meta-train"][:-1] == before["meta-train"][:-1]
    assert after["meta-train"][-1] == LONG and before["meta-train"][-1] == LONG - 1


def test_a_probe_panel_keeps_the_first_and_the_latest_measurements():
    records = long_run()
    probes = [r["iteration"] for r in records if "probe" in r]
    spec, rows = plots.probe_curves(records, "cosine")
    drawn = sorted({row["iteration"] for row in rows})
    assert len(drawn) <= plots.MAX_PROBE_POINTS and drawn[0] == probes[0] and drawn[-1] == probes[-1]


def test_what_a_redraw_of_two_long_runs_sends_is_bounded_however_long_they_ran():
    """Compare's four charts of a MAML and a FOMAML run: their rows as JSON (Streamlit sends them as Arrow, smaller
    still), for runs of 10,000 and of 100,000 iterations. They sent 2.4 MB to each viewer every 2 s."""
    def size(iterations: int) -> int:
        runs = {"MAML": long_run(iterations), "FOMAML": long_run(iterations)}
        return sum(len(json.dumps(plots.training_curves(runs, metric, x)[1]))
                   for metric in ("loss", "accuracy") for x in plots.X_AXES)

    short, long = size(10_000), size(LONG)
    assert long < 400_000  # 100 KB a redraw (2 s) per viewer as Arrow: a classroom's WiFi for 30 viewers
    assert long < 1.2 * short  # bounded by the charts, not by the runs
