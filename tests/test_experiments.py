"""Experiments: resumable runs, shared weights, the compute-matched control, the tools.

Every run here is tiny: the MLP on 120 or 200 digits per split, population 4, one
or two generations, 20 to 30 training steps.
"""

from __future__ import annotations

import csv
import json
import importlib.util
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from memdeploy import experiments
from memdeploy.datasets import load_dataset
from memdeploy.errors import RunFolderError
from memdeploy.experiments import ga_compute_budget, noise_aware_alone, run_setting
from memdeploy.runfolder import read_json
from memdeploy.settings import make_settings

TOOLS = Path(__file__).resolve().parents[1] / "tools"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = {
    "limit": 120,
    "population": 4,
    "generations": 1,
    "float_steps": 30,
    "baseline_steps": 30,
    "finetune_steps": 2,
    "test_draws": 2,
    "selection_draws": 2,
    "finalists": 2,
}
STUDY_OPTIONS = [
    "--limit",
    "120",
    "--float-steps",
    "30",
    "--baseline-steps",
    "30",
    "--finetune-steps",
    "1",
    "--test-draws",
    "2",
    "--selection-draws",
    "2",
    "--finalists",
    "2",
]


def _load_tool(name: str):
    if str(TOOLS) not in sys.path:
        sys.path.insert(
            0, str(TOOLS)
        )  # study.py imports its helpers from tools/studies
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def ga_run(tmp_path_factory):
    """A finished tiny GA run and its settings."""
    settings = make_settings(**TINY, seed=0)
    run_dir = tmp_path_factory.mktemp("ga") / "run"
    run_setting(settings, run_dir)
    return settings, run_dir


@pytest.fixture(scope="module")
def paper_tool(tmp_path_factory):
    """reproduce_paper.py run with --quick on the embedded-default task, two seeds."""
    tool = _load_tool("reproduce_paper")
    out = tmp_path_factory.mktemp("paper")
    arguments = ["--quick", "--tasks", "mlp-digits", "--seeds", "0", "1"]
    assert tool.main([*arguments, "--out", str(out)]) == 0
    return tool, out, arguments


def test_budget_counts_finetune_and_forward():
    settings = make_settings(**TINY)
    budget = ga_compute_budget(settings, validation_images=216, images_per_step=64)
    assert budget.finetune_steps == 4 * 2 * 2
    assert budget.evaluations == 4 * 2 + 2 * 2
    assert budget.forward_steps == 14  # ceil(12 x 216 / (3 x 64)) = ceil(13.5)
    assert budget.total == 30


def test_budget_without_forward_counts_finetune_only():
    settings = make_settings(**TINY)
    budget = ga_compute_budget(settings, 216, 64, count_forward=False)
    assert budget.forward_steps == 0
    assert budget.total == 16


def test_control_trains_counted_steps(ga_run, tmp_path, monkeypatch):
    settings, run_dir = ga_run
    drawn = []
    original_train = experiments.train

    def counting_train(model, task, **options):
        original_sample = task.sample_batch
        task.sample_batch = lambda rng: drawn.append(1) or original_sample(rng)
        try:
            return original_train(model, task, **options)
        finally:
            task.sample_batch = original_sample

    monkeypatch.setattr(experiments, "train", counting_train)
    result = noise_aware_alone(run_dir, tmp_path / "control")

    validation = len(load_dataset("digits", seed=0, limit=120).validation)
    expected = ga_compute_budget(settings, validation, images_per_step=64).total
    assert len(drawn) == expected
    assert result["steps"] == expected
    assert result["budget"]["validation_images"] == validation


def test_control_uses_baseline_noise_draws(ga_run, tmp_path):
    _, run_dir = ga_run
    result = noise_aware_alone(run_dir, tmp_path / "control")
    summary = read_json(run_dir / "summary.json")
    assert result["baseline_matches_run"]
    assert result["test_draws"] == summary["baseline"]["test_draws"]
    assert (tmp_path / "control" / "weights.safetensors").is_file()


def test_control_with_other_budget_rejected(ga_run, tmp_path):
    _, run_dir = ga_run
    noise_aware_alone(run_dir, tmp_path / "control", count_forward=False)
    with pytest.raises(RunFolderError, match="counts_forward_passes=False"):
        noise_aware_alone(run_dir, tmp_path / "control", count_forward=True)


def test_interrupted_run_is_resumed(tmp_path):
    settings = make_settings(**TINY, seed=2)
    expected = run_setting(settings, tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    assert run_setting(settings, tmp_path / "run") == expected


def test_finished_run_other_settings_rejected(ga_run):
    _, run_dir = ga_run
    other = make_settings(**(TINY | {"population": 6}), seed=0)
    with pytest.raises(RunFolderError, match="population"):
        run_setting(other, run_dir)


def test_cached_weights_equal_trained_weights(tmp_path):
    cache = tmp_path / "weights"
    first = make_settings(**TINY, seed=1)
    second = make_settings(**(TINY | {"selection": "rank"}), seed=1)
    run_setting(first, tmp_path / "first", weight_cache=cache)
    run_setting(second, tmp_path / "cached", weight_cache=cache)
    run_setting(second, tmp_path / "trained")

    for name in experiments.WEIGHT_FILES:
        cached = load_file(str(tmp_path / "cached" / name))
        trained = load_file(str(tmp_path / "trained" / name))
        assert cached.keys() == trained.keys()
        for key in cached:
            assert cached[key].equal(trained[key]), f"{name}: {key} differs"


def test_missing_cifar_gives_not_found_row(tmp_path):
    tool = _load_tool("reproduce_paper")
    arguments = ["--tasks", "mobilenetv2-cifar10", "--seeds", "0", "--quick"]
    missing = tmp_path / "no-cifar"
    assert (
        tool.main([*arguments, "--cifar10-dir", str(missing), "--out", str(tmp_path)])
        == 0
    )

    _, rows = _read_rows(tmp_path / "table.csv")
    assert rows[0]["status"] == "data not found"
    assert rows[0]["paper_baseline"] == "77.91"
    assert "--cifar10-dir" in rows[0]["note"]
    assert "data not found" in (tmp_path / "table.md").read_text(encoding="utf-8")


def test_paper_table_has_every_column(paper_tool):
    _, out, _ = paper_tool
    paper_table = importlib.import_module("studies.paper_table")
    fields, rows = _read_rows(out / "table.csv")
    assert fields == paper_table.TABLE_FIELDS
    assert rows[0]["status"] == "done"
    for field in fields:
        if field not in ("note", "paper_baseline", "paper_ga"):
            assert rows[0][field] != "", f"{field} is empty"
    assert rows[0]["seeds"] == "0 1"


def test_markdown_table_has_every_column(paper_tool):
    _, out, _ = paper_tool
    header, _, row = (out / "table.md").read_text(encoding="utf-8").splitlines()
    for column in ("float", "baseline", "noise-aware alone", "GA", "paper baseline"):
        assert column in header
    assert row.count("±") == 4


def test_rerun_skips_finished_runs(paper_tool, monkeypatch):
    tool, out, arguments = paper_tool
    table = (out / "table.csv").read_text(encoding="utf-8")

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(experiments, "optimize", fail)
    monkeypatch.setattr(experiments, "train", fail)
    assert tool.main([*arguments, "--out", str(out)]) == 0
    assert (out / "table.csv").read_text(encoding="utf-8") == table


def _study_helpers():
    """Load tools/study.py, which puts tools/ on sys.path, and its helper modules."""
    _load_tool("study")
    return importlib.import_module("studies.rows"), importlib.import_module(
        "studies.plots"
    )


def test_study_writes_csv_and_png(tmp_path):
    study = _load_tool("study")
    study_rows, _ = _study_helpers()
    arguments = ["generations", "--values", "1", "2", "--population", "4"]
    assert study.main([*arguments, *STUDY_OPTIONS, "--out", str(tmp_path)]) == 0

    fields, rows = _read_rows(tmp_path / "generations" / "generations.csv")
    assert fields == study_rows.POINT_FIELDS
    assert [row["generations"] for row in rows] == ["1", "2"]
    png = (tmp_path / "generations" / "generations.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(list((tmp_path / "weights").iterdir())) == 1


def test_chosen_generation_within_run(ga_run):
    settings, run_dir = ga_run
    study_rows, _ = _study_helpers()
    generation = study_rows.chosen_generation(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if summary["chosen"] == "baseline":
        assert generation == "baseline"
    else:
        assert generation == "last" or 0 <= generation <= settings.generations


def _synthetic_points(grid: list[dict]) -> list[dict]:
    study_rows, _ = _study_helpers()
    fixed = {
        "generations": 25,
        "population": 10,
        "crossover_probability": 0.8,
        "mutation_probability": 0.01,
        "init": "origin",
        "selection": "roulette",
        "mutation": "max-min",
    }
    points = []
    for index, point in enumerate(grid):
        row = dict.fromkeys(study_rows.POINT_FIELDS) | fixed | point
        for metric in study_rows.METRICS:
            row |= {f"{metric}_mean": 0.8 + 0.01 * index, f"{metric}_std": 0.02}
        points.append(row)
    return points


CROSSOVER_GRID = [
    {"crossover_probability": c, "mutation_probability": m}
    for c in (0.6, 0.8)
    for m in (0.001, 0.01)
]
STRATEGY_GRID = [
    {"init": i, "selection": s, "mutation": m}
    for i in ("origin", "large")
    for s in ("roulette", "rank")
    for m in ("max-min", "add-noise")
]


@pytest.mark.parametrize(
    ("plot_name", "grid"),
    [
        ("plot_heatmap", CROSSOVER_GRID),
        ("plot_strategy_bars", STRATEGY_GRID),
        ("plot_curve", [{"population": value} for value in (4, 8, 12)]),
    ],
)
def test_study_plot_writes_png(plot_name, grid, tmp_path):
    _, plots = _study_helpers()
    path = tmp_path / "plot.png"
    points = _synthetic_points(grid)
    if plot_name == "plot_curve":
        plots.plot_curve(points, "population", path, "title", "caption")
    else:
        getattr(plots, plot_name)(points, path, "title", "caption")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
