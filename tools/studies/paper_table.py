"""The results table of tools/reproduce_paper.py: per-seed rows, aggregation, files.

Test accuracies are aggregated over seeds as the mean and the sample standard
deviation of each seed's mean over its test noise draws. With one seed the standard
deviation is left empty.
"""

from __future__ import annotations

import math
from pathlib import Path

from memdeploy.errors import DatasetError
from memdeploy.experiments import mean_std
from memdeploy.runfolder import atomic_write_text, write_csv

METHODS = ("float", "baseline", "noise_aware_alone", "ga")
SEED_FIELDS = [
    "task",
    "seed",
    *(f"{method}_test" for method in METHODS),
    *(f"{method}_test_std" for method in METHODS[1:]),
    *(f"{method}_validation" for method in METHODS),
    "matched_steps",
    "test_draws",
    "ga_seconds",
    "ga_run",
]
"""Columns of seeds.csv; a `_test_std` column is the spread over test noise draws."""

TABLE_FIELDS = [
    "task",
    "status",
    "seeds",
    *(f"{method}_test_{stat}" for method in METHODS for stat in ("mean", "std")),
    "matched_steps",
    "test_draws",
    "paper_baseline",
    "paper_ga",
    "note",
]
MARKDOWN_HEADERS = [
    "task",
    "float",
    "baseline",
    "noise-aware alone",
    "GA",
    "matched steps",
    "paper baseline -> GA",
    "seeds",
]


def seed_row(name: str, seed: int, summary: dict, control: dict, run_dir: Path) -> dict:
    """Return the row of one seed from the GA run's summary and the control's."""
    scores = {"noise_aware_alone": control} | {
        method: summary[key]
        for method, key in (
            ("float", "float"),
            ("baseline", "baseline"),
            ("ga", "best"),
        )
    }
    row = {"task": name, "seed": seed, "matched_steps": control["steps"]}
    for method, score in scores.items():
        row[f"{method}_test"] = score["test_accuracy"]
        row[f"{method}_test_std"] = score.get("test_accuracy_std")
        row[f"{method}_validation"] = score["validation_accuracy"]
    ga_seconds = summary.get("ga_time", {}).get("generation_s")
    return row | {
        "test_draws": summary["best"]["test_draws"],
        "ga_seconds": ga_seconds,
        "ga_run": str(run_dir),
    }


def table_row(task, seed_rows: list[dict]) -> dict:
    """Aggregate the seed rows of one task into its table row."""
    row = {
        "task": task.title,
        "status": "done",
        "seeds": " ".join(str(r["seed"]) for r in seed_rows),
        "matched_steps": " ".join(sorted({str(r["matched_steps"]) for r in seed_rows})),
        "test_draws": seed_rows[0]["test_draws"],
        "paper_baseline": task.paper_baseline,
        "paper_ga": task.paper_ga,
        "note": "",
    }
    for method in METHODS:
        mean, std = mean_std(r[f"{method}_test"] for r in seed_rows)
        row |= {f"{method}_test_mean": mean, f"{method}_test_std": std}
    return row


def missing_data_row(task, err: DatasetError) -> dict:
    """Return the row of a task whose dataset is missing or unreadable."""
    status = "data not found" if "not found" in str(err) else "dataset error"
    return {
        "task": task.title,
        "status": status,
        "note": f"{err} (reproduce_paper.py takes the folder as --{task.dataset}-dir)",
        "paper_baseline": task.paper_baseline,
        "paper_ga": task.paper_ga,
    }


def format_percent(mean: float | None, std: float | None = None) -> str:
    """Format an accuracy in [0, 1] as a percentage, with its spread when given.

    >>> format_percent(0.81994, 0.0052)
    '81.99 ± 0.52'
    >>> format_percent(0.81994)
    '81.99'
    """
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_cells(row: dict) -> list[str]:
    """Format one table row as the cells of the Markdown table."""
    paper = "not in Table 1"
    if row["paper_baseline"] is not None:
        paper = f"{row['paper_baseline']:.2f} -> {row['paper_ga']:.2f}"
    if row["status"] != "done":
        return [row["task"], row["status"], "", "", "", "", paper, ""]
    accuracies = [
        format_percent(row[f"{method}_test_mean"], row[f"{method}_test_std"])
        for method in METHODS
    ]
    return [row["task"], *accuracies, row["matched_steps"], paper, row["seeds"]]


def write_markdown_table(path: Path, headers: list[str], rows: list[list[str]]) -> None:
    """Write a Markdown table atomically."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_tables(out: Path, rows: list[dict], seed_rows: list[dict]) -> None:
    """Write table.csv, table.md and seeds.csv under `out`."""
    write_csv(out / "table.csv", TABLE_FIELDS, rows)
    write_csv(out / "seeds.csv", SEED_FIELDS, seed_rows)
    cells = [markdown_cells(row) for row in rows]
    write_markdown_table(out / "table.md", MARKDOWN_HEADERS, cells)
