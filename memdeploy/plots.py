"""PNG plots of a run."""

from __future__ import annotations

import io
from pathlib import Path

from memdeploy.runfolder import atomic_write_bytes


def plot_fitness(history: list[dict], path: Path) -> None:
    """Plot best, mean and min fitness per generation to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generations = [int(row["generation"]) for row in history]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for column, style in (("best_fitness", "-o"), ("mean_fitness", "-s"), ("min_fitness", ":")):
        values = [float(row[column]) for row in history]
        axes.plot(generations, values, style, label=column.replace("_", " "), markersize=3)
    axes.set_xlabel("generation")
    axes.set_ylabel("validation accuracy (fitness)")
    axes.set_title("GA fitness per generation")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
