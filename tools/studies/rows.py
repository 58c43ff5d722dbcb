"""Rows of a study: one per run, and one per grid point aggregated over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memdeploy.experiments import mean_std
from memdeploy.genome import Genome
from memdeploy.models import build_model
from memdeploy.runfolder import load_checkpoint, load_weights, read_csv, read_json
from memdeploy.settings import OptimizeSettings

PARAMETERS = [
    "generations",
    "population",
    "crossover_probability",
    "mutation_probability",
    "init",
    "selection",
    "mutation",
]
METRICS = [
    "float_test",
    "baseline_test",
    "baseline_validation",
    "ga_test",
    "ga_validation",
    "ga_test_gain",
    "max_fitness",
]
"""Per-run numbers that are averaged over seeds. `ga_test_gain` is GA minus baseline
test accuracy of the same run, so the spread of the split between seeds cancels.
`max_fitness` is the highest single-draw fitness of any generation."""

RUN_FIELDS = [
    "study",
    "point",
    *PARAMETERS,
    "seed",
    *METRICS,
    "ga_test_draw_std",
    "chosen_generation",
    "test_draws",
    "validation_draws",
    "fitness_split",
    "run_dir",
]
POINT_FIELDS = [
    "study",
    "point",
    *PARAMETERS,
    "seeds",
    "test_draws",
    "validation_draws",
    "fitness_split",
    "chosen_generations",
    *(f"{metric}_{stat}" for metric in METRICS for stat in ("mean", "std")),
]


def run_row(study: str, point: str, settings: OptimizeSettings, run_dir: Path) -> dict:
    """Return the row of one finished run."""
    summary = read_json(run_dir / "summary.json")
    fitness = [float(row["best_fitness"]) for row in read_csv(run_dir / "history.csv")]
    return {
        "study": study,
        "point": point,
        **{name: getattr(settings, name) for name in PARAMETERS},
        "seed": settings.seed,
        "float_test": summary["float"]["test_accuracy"],
        "baseline_test": summary["baseline"]["test_accuracy"],
        "baseline_validation": summary["baseline"]["validation_accuracy"],
        "ga_test": summary["best"]["test_accuracy"],
        "ga_validation": summary["best"]["validation_accuracy"],
        "ga_test_gain": summary["best"]["test_accuracy"]
        - summary["baseline"]["test_accuracy"],
        "max_fitness": max(fitness),
        "ga_test_draw_std": summary["best"]["test_accuracy_std"],
        "chosen_generation": chosen_generation(run_dir),
        "test_draws": summary["best"]["test_draws"],
        "validation_draws": summary["best"]["validation_draws"],
        "fitness_split": settings.fitness_split,
        "run_dir": str(run_dir),
    }


def chosen_generation(run_dir: Path) -> int | str:
    """Return the generation whose best candidate the run chose.

    The run chooses among the generation bests, the last population and the
    baseline: "baseline" when it kept the baseline, "last" for a member of the last
    population other than its best.
    """
    if read_json(run_dir / "summary.json").get("chosen") == "baseline":
        return "baseline"
    manifest = read_json(run_dir / "manifest.json")
    settings, dataset = manifest["settings"], manifest["dataset"]
    model = build_model(
        settings["model"], dataset["image_shape"], dataset["num_classes"]
    )
    model.load_state_dict(load_weights(run_dir / "best.safetensors"))
    best = Genome(model).vector(model)
    state = load_checkpoint(run_dir / "checkpoint.npz")
    for generation, genes in enumerate(state.hall_of_fame):
        if np.array_equal(genes, best):
            return generation
    return "last"


def aggregate(rows: list[dict]) -> list[dict]:
    """Return one row per grid point, in first-seen order: mean and sample std over
    its seeds."""
    points = []
    for label in dict.fromkeys(row["point"] for row in rows):
        runs = [row for row in rows if row["point"] == label]
        point = {key: runs[0][key] for key in ["study", "point", *PARAMETERS]}
        point |= {
            "seeds": " ".join(str(row["seed"]) for row in runs),
            "test_draws": runs[0]["test_draws"],
            "validation_draws": runs[0]["validation_draws"],
            "fitness_split": runs[0]["fitness_split"],
            "chosen_generations": " ".join(str(r["chosen_generation"]) for r in runs),
        }
        for metric in METRICS:
            mean, std = mean_std(row[metric] for row in runs)
            point |= {f"{metric}_mean": mean, f"{metric}_std": std}
        points.append(point)
    return points
