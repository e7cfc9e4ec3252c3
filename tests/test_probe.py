"""The first- against second-order probe (fewshot/probe.py): its numbers against learn2learn's gradients, a
training curve it leaves alone, its records, and its figure on the Compare page."""

import argparse
import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptests import chart_rows, open_page
from fake_runs import record, run_folder
from fewshot import cli, maml, metrics, notebook_loop, plots, probe, training
from fewshot.checkpoints import load_checkpoint
from fewshot.config import Config
from fewshot.models import build_model
from fewshot.tasks import TaskSampler

TOLERANCE = 1e-10  # float64; relative to the numbers compared


def learn2learn_gradient(model, batch, steps: int, first_order: bool) -> dict:
    """The meta-gradient of learn2learn's MAML (clone() and adapt() per task), by parameter name."""
    model.zero_grad()
    notebook_loop.meta_backward(model, batch, 0.4, steps, first_order)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def expected_numbers(g1: dict, g2: dict, names: list) -> dict:
    """cosine, norm ratio, dropped-term norm and |g2| of the parameters `names`, computed here."""
    a = torch.cat([g1[name].flatten() for name in names])
    b = torch.cat([g2[name].flatten() for name in names])
    return {"cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "norm_ratio": (torch.linalg.norm(a) / torch.linalg.norm(b)).item(),
            "dropped_norm": torch.linalg.norm(b - a).item(), "g2_norm": torch.linalg.norm(b).item()}


def module_names(model, module) -> list:
    """The full parameter names of a submodule of `model`."""
    return [name for name, p in model.named_parameters() if any(p is q for q in module.parameters())]


@pytest.mark.parametrize("backbone", ["conv", "fc"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("tasks_at_once", [0, 3], ids=["all-tasks-at-once", "3-tasks-at-once"])
def test_probe_equals_the_numbers_of_learn2learns_first_and_second_order_gradients(backbone, steps, tasks_at_once):
    torch.manual_seed(0)
    model = build_model(backbone, 5, channels=8, blocks=3).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 2, 3).sample(4, seed=1).to(torch.float64)
    g2 = learn2learn_gradient(model, batch, steps, first_order=False)
    g1 = learn2learn_gradient(model, batch, steps, first_order=True)

    model.zero_grad()
    maml.meta_backward(model, batch, 0.4, steps, False, tasks_at_once=tasks_at_once)  # as training does, before
    grad_before, rng_before = {name: p.grad.clone() for name, p in model.named_parameters()}, torch.get_rng_state()
    measured = probe.first_versus_second_order(model, batch, 0.4, steps, tasks_at_once)
    assert all(torch.equal(p.grad, grad_before[name]) for name, p in model.named_parameters())  # .grad untouched
    assert torch.equal(torch.get_rng_state(), rng_before)  # no random number drawn

    layers = {f"block {i + 1}": module_names(model, block) for i, block in enumerate(model.blocks)}
    layers["classifier"] = module_names(model, model.classifier)
    assert list(measured["layers"]) == list(layers)
    for numbers, names in [(measured, list(g2))] + [(measured["layers"][layer], layers[layer]) for layer in layers]:
        expected = expected_numbers(g1, g2, names)
        assert expected["cosine"] < 1 - 1e-6  # the dropped term is there, else this test would prove little
        for key in ("cosine", "norm_ratio"):
            assert abs(numbers[key] - expected[key]) < TOLERANCE, (key, numbers, expected)
        for key in ("dropped_norm", "g2_norm"):
            assert abs(numbers[key] - expected[key]) < TOLERANCE * expected["g2_norm"], (key, numbers, expected)


def test_without_inner_steps_first_order_is_second_order():
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=8, blocks=2).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 1, 2).sample(3, seed=0).to(torch.float64)
    maml.meta_backward(model, batch, 0.4, 0, first_order=False)
    measured = probe.first_versus_second_order(model, batch, 0.4, 0)
    assert abs(measured["cosine"] - 1) < TOLERANCE and abs(measured["norm_ratio"] - 1) < TOLERANCE
    assert measured["dropped_norm"] == 0 and measured["g2_norm"] > 0


def test_only_maml_runs_of_this_librarys_engine_probe_and_only_every_probe_every_iterations():
    config = Config(data_root="x", algorithm="maml", probe_every=25)
    assert [i for i in range(1, 101) if training.probes(config, i)] == [25, 50, 75, 100]
    for change in (dict(algorithm="fomaml"), dict(engine="learn2learn"), dict(probe_every=0)):
        assert not any(training.probes(dataclasses.replace(config, **change), i) for i in range(1, 101)), change
    with pytest.raises(ValueError, match="probe_every must be at least 0"):
        Config(data_root="x", probe_every=-1)


def test_the_command_lines_train_takes_probe_every():
    parser = argparse.ArgumentParser()
    cli.add_config_options(parser)
    assert cli.config_from_args(parser.parse_args(["--probe-every", "7"])).probe_every == 7


def tiny_maml(data_root: str, probe_every: int) -> Config:
    return Config(data_root=data_root, algorithm="maml", channels=8, blocks=2, meta_batch=2, iterations=4,
                  val_every=2, val_tasks=4, checkpoint_every=4, test_tasks=0, probe_every=probe_every)


def test_the_probe_leaves_the_training_curve_and_the_weights_bit_identical(data_root, tmp_path):
    curves, weights = {}, {}
    for probe_every in (0, 1):
        run_dir = tmp_path / f"probe_every_{probe_every}"
        training.train(tiny_maml(data_root, probe_every), run_dir, progress=False)
        records, skipped = metrics.read(run_dir / training.METRICS)  # as the app reads them
        assert skipped == 0 and len(records) == 4
        assert all(("probe" in r) == bool(probe_every) for r in records)
        curves[probe_every] = [{k: v for k, v in r.items() if k.startswith(("train_", "val_"))} for r in records]
        model, _ = load_checkpoint(run_dir / training.CHECKPOINT)
        weights[probe_every] = model.state_dict()
    assert curves[0] == curves[1]  # exactly: floats compared bit for bit
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_runs_probe_measures_the_meta_batch_of_its_iteration_before_the_update(data_root, tmp_path):
    config = tiny_maml(data_root, 2)
    records = training.train(config, tmp_path / "run", progress=False)
    model = training.initial_model(config)  # iteration 1's weights; then the update of iteration 1
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
    sampler = training.make_samplers(config)["train"]
    for iteration in (1, 2):
        batch = sampler.sample(config.meta_batch, seed=training.task_seed(config.seed, iteration))
        optimizer.zero_grad()
        maml.meta_backward(model, batch, config.inner_lr, config.inner_steps, first_order=False)
        if iteration == 2:
            expected = probe.first_versus_second_order(model, batch, config.inner_lr, config.inner_steps)
        optimizer.step()
    measured = records[1]["probe"]
    assert measured["seconds"] > 0 and "probe" not in records[0]
    assert list(measured["layers"]) == list(expected["layers"]) == ["block 1", "block 2", "classifier"]
    for numbers, wanted in [(measured, expected), *zip(measured["layers"].values(),
                                                      expected["layers"].values())]:
        for key in metrics.PROBE_NUMBERS:
            assert numbers[key] == pytest.approx(wanted[key], rel=1e-12), key


def test_the_probes_time_is_left_out_of_the_runs_seconds(data_root, tmp_path, monkeypatch):
    """A clock that moves 1 ms a reading, and 1000 s while the probe runs: the run's seconds never see them."""
    now = [0.0]

    def clock():
        now[0] += 0.001
        return now[0]

    def slow_probe(model, batch, inner_lr, steps, tasks_at_once):
        now[0] += 1000
        return {"cosine": 1.0, "norm_ratio": 1.0, "dropped_norm": 0.0, "g2_norm": 1.0, "layers": {}}

    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(training.probe, "first_versus_second_order", slow_probe)
    records = training.train(tiny_maml(data_root, 2), tmp_path / "run", progress=False)
    assert [r["iteration"] for r in records if "probe" in r] == [2, 4]
    assert all(r["probe"]["seconds"] >= 1000 for r in records if "probe" in r)
    assert records[-1]["seconds"] < 1 and all(r["tasks_per_second"] > 1 for r in records)


def probe_numbers(value: float) -> dict:
    return {"cosine": value, "norm_ratio": 1.1, "dropped_norm": 0.2, "g2_norm": 1.0}


def probed_record(iteration: int, cosine: float = 0.9) -> dict:
    """A MAML iteration's record with a probe, as training writes it."""
    layers = {"block 1": probe_numbers(cosine - 0.1), "block 2": probe_numbers(cosine), "classifier": probe_numbers(1)}
    return {**record(iteration), "probe": {**probe_numbers(cosine), "layers": layers, "seconds": 0.1}}


def test_metrics_read_probe_records_and_skip_malformed_ones():
    good = [probed_record(1), record(2)]
    broken = [{**record(3), "probe": "high"}, {**record(4), "probe": probe_numbers(0.5)},  # no layers
              {**record(5), "probe": {**probe_numbers(0.5), "layers": {"block 1": 3}}},
              {**record(6), "probe": {**probe_numbers(0.5), "layers": {"block 1": probe_numbers("x")}}},
              {**record(7), "probe": {**probe_numbers(None), "layers": {}}}]
    records, skipped = metrics.parse([json.dumps(r) for r in good + broken])
    assert records == good and skipped == len(broken)


def compare_page(runs_folder: Path, monkeypatch, *fake_runs) -> AppTest:
    """The Compare page over fake runs: (name, algorithm, records) each, of one comparison."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(runs_folder))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(runs_folder.parent / "checkpoints"))
    for name, algorithm, records in fake_runs:
        launch = json.dumps({"pid": None, "started": 0.0, "comparison": "c",
                             "config": Config(algorithm=algorithm, iterations=6).to_dict()})
        run_folder(runs_folder, name, launch=launch, metrics=records)
    return open_page("pages/compare.py")


def page_text(app: AppTest) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption") for e in app.get(kind))


def test_compare_page_plots_the_probe_of_a_maml_run_and_says_how_to_read_it(tmp_path, monkeypatch):
    maml_records = [probed_record(1, 0.95), record(2), probed_record(3, 0.7)]
    app = compare_page(tmp_path / "runs", monkeypatch, ("m", "maml", maml_records),
                       ("f", "fomaml", [record(1), record(2), record(3)]))
    charts = {json.loads(chart.proto.spec)["title"]["text"]: chart_rows(chart) for chart in app.get("vega_lite_chart")}
    cosines = {}
    for row in charts[plots.PROBE_PANELS["cosine"]]:
        if row["measure"] == "cosine":
            cosines.setdefault(row["layer"], []).append(row["value"])
    assert list(cosines) == ["all weights", "block 1", "block 2", "classifier"]
    assert cosines["all weights"] == [0.95, 0.7] and cosines["block 1"] == [0.85, 0.6]
    assert "MAML" in page_text(app)  # the run's label above its charts
    assert "A cosine near 1 means that first order points where MAML points" in page_text(app)
    assert "No measurements in these runs" not in page_text(app)


def test_compare_page_without_probe_records_says_how_to_get_them(tmp_path, monkeypatch):
    app = compare_page(tmp_path / "runs", monkeypatch, ("m", "maml", [record(1), record(2)]),
                       ("f", "fomaml", [record(1), record(2)]))
    titles = [json.loads(chart.proto.spec)["title"]["text"] for chart in app.get("vega_lite_chart")]
    assert len(titles) == 4 and not set(titles) & set(plots.PROBE_PANELS.values())  # loss and accuracy, twice
    assert "No measurements in these runs" in page_text(app) and "--probe-every" in page_text(app)
    assert "A cosine near 1" not in page_text(app)


def many_layers_record(iteration: int, layers: int) -> dict:
    """A probe record as a hand edit, or a model larger than the form allows, may leave it: `layers` layers."""
    numbers = {f"block {i + 1}": probe_numbers(0.5) for i in range(layers - 1)} | {"classifier": probe_numbers(1)}
    return {**record(iteration), "probe": {**probe_numbers(0.9), "layers": numbers, "seconds": 0.1}}


def test_a_probe_panel_sends_only_what_it_draws_however_long_the_run_and_many_its_layers():
    """A run probed every iteration sent, per panel, 2,000 records x each layer x two measures, |g2| too where only
    the dashed panel draws it: 1.5 MB a panel every 2 s while it trained; a record of 500 layers, 500 lines."""
    records = [many_layers_record(i, 7) for i in range(1, 5001)] + [many_layers_record(5001, 500)]
    for measure in plots.PROBE_PANELS:
        spec, rows = plots.probe_curves(records, measure)
        drawn = {row["measure"] for row in rows}
        assert drawn == ({measure, "g2_norm"} if measure == "dropped_norm" else {measure}), (measure, drawn)
        layers = spec["layer"][0]["encoding"]["color"]["scale"]["domain"]
        assert {row["layer"] for row in rows} <= set(layers) and len(layers) <= len(plots.COLORS) + 1
        iterations = {row["iteration"] for row in rows}
        assert len(iterations) <= plots.MAX_POINTS // 8 and max(iterations) == 5001  # the latest is drawn
        assert len(rows) <= len(drawn) * len(layers) * len(iterations)


def test_every_layer_of_the_largest_network_has_a_colour_of_its_own():
    """8 conv blocks (Config's most) and the classifier: the classifier's line was black, as all weights' is."""
    spec, rows = plots.probe_curves([many_layers_record(1, 9)], "cosine")
    scale = spec["layer"][0]["encoding"]["color"]["scale"]
    assert len(scale["domain"]) == 10 and {row["layer"] for row in rows} == set(scale["domain"])
    assert len(set(scale["range"][:len(scale["domain"])])) == len(scale["domain"])
