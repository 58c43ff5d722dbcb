"""PNG plots of GA hyperparameter studies: curves, a heatmap and grouped bars.

Every plot takes the aggregated rows of a study (one per grid point, with
`ga_test_mean`, `ga_test_std`, `ga_validation_mean`, ... as written to the study's
CSV) and a caption that names the seeds and noise draws behind the numbers. Each
plot has a panel of the GA's test gain over the baseline, paired by seed: with few
seeds the split differs between seeds by more than the GA changes accuracy, and the
pairing removes that spread.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from memdeploy.runfolder import atomic_write_bytes

PANELS = {
    "ga_test": "GA, test accuracy (%)",
    "ga_validation": "GA, validation accuracy (%)",
    "ga_test_gain": "GA minus baseline, test (points, paired by seed)",
}
CURVE_STYLES = {
    "ga_test": {"color": "tab:blue", "marker": "o", "label": "GA, test"},
    "ga_validation": {
        "color": "tab:orange",
        "marker": "s",
        "linestyle": "--",
        "label": "GA, validation",
    },
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _means(rows: list[dict], column: str) -> np.ndarray:
    return 100 * np.array([row[f"{column}_mean"] for row in rows], dtype=np.float64)


def _spreads(rows: list[dict], column: str) -> np.ndarray:
    """Return the sample std in percent, 0 where one seed leaves it undefined."""
    return 100 * np.array([row[f"{column}_std"] or 0.0 for row in rows])


def _baseline_band(axes, rows: list[dict], split: str, color: str = "gray") -> None:
    """Draw the baseline's accuracy on `split`, the same at every grid point of a seed."""
    mean = 100 * rows[0][f"baseline_{split}_mean"]
    std = 100 * (rows[0][f"baseline_{split}_std"] or 0.0)
    axes.axhline(mean, color=color, linestyle=":", label=f"baseline, {split}")
    if std:
        axes.axhspan(mean - std, mean + std, color=color, alpha=0.12)


def save_figure(figure, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _finish(figure, title: str, caption: str, path: Path) -> None:
    figure.suptitle(title, fontsize=10)
    figure.text(0.01, 0.01, caption, fontsize=7, wrap=True, va="bottom")
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    save_figure(figure, path)


def plot_curve(
    rows: list[dict], parameter: str, path: Path, title: str, caption: str
) -> None:
    """Plot GA accuracy and its gain over the baseline against a numeric parameter."""
    plt = _pyplot()
    figure, (accuracy, gain) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    x = [row[parameter] for row in rows]
    for column, style in CURVE_STYLES.items():
        means, spreads = _means(rows, column), _spreads(rows, column)
        accuracy.errorbar(x, means, yerr=spreads, capsize=3, **style)
    _baseline_band(accuracy, rows, "test", CURVE_STYLES["ga_test"]["color"])
    _baseline_band(accuracy, rows, "validation", CURVE_STYLES["ga_validation"]["color"])
    accuracy.set_ylabel("accuracy (%)")
    accuracy.legend(fontsize=8)

    means, spreads = _means(rows, "ga_test_gain"), _spreads(rows, "ga_test_gain")
    gain.errorbar(x, means, yerr=spreads, capsize=3, marker="o", color="tab:green")
    gain.axhline(0.0, color="gray", linestyle=":")
    gain.set_ylabel(PANELS["ga_test_gain"])

    for axes in (accuracy, gain):
        axes.set_xlabel(parameter.replace("_", " "))
        axes.set_xticks(x)
        axes.grid(alpha=0.3)
    _finish(figure, title, caption, path)


def _heatmap_panel(figure, axes, rows, column, crossover, mutation) -> None:
    grid = np.full((len(crossover), len(mutation)), np.nan)
    labels = {}
    for row, mean, spread in zip(rows, _means(rows, column), _spreads(rows, column)):
        i = crossover.index(row["crossover_probability"])
        j = mutation.index(row["mutation_probability"])
        grid[i, j] = mean
        labels[i, j] = f"{mean:.1f}" + (f"\n±{spread:.1f}" if spread else "")

    if column == "ga_test_gain":
        limit = max(float(np.nanmax(np.abs(grid))), 1e-9)
        image = axes.imshow(
            grid, cmap="coolwarm_r", vmin=-limit, vmax=limit, origin="lower"
        )
    else:
        image = axes.imshow(grid, cmap="viridis", origin="lower")
    low, high = np.nanmin(grid), np.nanmax(grid)
    for (i, j), text in labels.items():
        # White text on the dark end of viridis, black elsewhere.
        dark = column != "ga_test_gain" and grid[i, j] < (low + high) / 2
        color = "white" if dark else "black"
        axes.text(j, i, text, ha="center", va="center", fontsize=7, color=color)

    figure.colorbar(image, ax=axes)
    axes.set_aspect("auto")
    axes.set_xticks(range(len(mutation)), [f"{value:g}" for value in mutation])
    axes.set_yticks(range(len(crossover)), [f"{value:g}" for value in crossover])
    axes.set_xlabel("mutation probability (MP)")
    axes.set_ylabel("crossover probability (CP)")
    axes.set_title(PANELS[column], fontsize=9)


def plot_heatmap(rows: list[dict], path: Path, title: str, caption: str) -> None:
    """Plot the crossover x mutation probability grid: test, validation and gain."""
    plt = _pyplot()
    crossover = sorted({row["crossover_probability"] for row in rows})
    mutation = sorted({row["mutation_probability"] for row in rows})
    figure, panels = plt.subplots(1, 3, figsize=(16, 4.8), dpi=100)
    for axes, column in zip(panels, PANELS):
        _heatmap_panel(figure, axes, rows, column, crossover, mutation)
    baselines = [100 * rows[0][f"baseline_{s}_mean"] for s in ("test", "validation")]
    title += " (baseline: test {:.1f}%, validation {:.1f}%)".format(*baselines)
    _finish(figure, title, caption, path)


def plot_strategy_bars(rows: list[dict], path: Path, title: str, caption: str) -> None:
    """Plot bars grouped by selection and mutation, one bar per init: test,
    validation and gain."""
    plt = _pyplot()
    groups = list(dict.fromkeys((row["selection"], row["mutation"]) for row in rows))
    inits = list(dict.fromkeys(row["init"] for row in rows))
    width = 0.8 / len(inits)
    figure, panels = plt.subplots(1, 3, figsize=(16, 4.8), dpi=100)
    for axes, column in zip(panels, PANELS):
        for k, init in enumerate(inits):
            chosen = [
                next(
                    r
                    for r in rows
                    if (r["selection"], r["mutation"]) == group and r["init"] == init
                )
                for group in groups
            ]
            positions = np.arange(len(groups)) + (k - (len(inits) - 1) / 2) * width
            axes.bar(
                positions,
                _means(chosen, column),
                width,
                yerr=_spreads(chosen, column),
                capsize=3,
                label=f"init {init}",
            )
        if column == "ga_test_gain":
            axes.axhline(0.0, color="gray", linestyle=":")
        else:
            _baseline_band(axes, rows, column.removeprefix("ga_"))
            axes.set_ylim(_accuracy_floor(rows), None)
            axes.set_ylim(top=min(axes.get_ylim()[1], 100.5))
        axes.set_xticks(range(len(groups)), [f"{s}\n{m}" for s, m in groups])
        axes.set_title(PANELS[column], fontsize=9)
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize=8)
    _finish(figure, title, caption, path)


def _accuracy_floor(rows: list[dict]) -> float:
    """Return a y-axis floor 3 points below the lowest bar or baseline error bar."""
    columns = ("ga_test", "ga_validation", "baseline_test", "baseline_validation")
    lows = [_means(rows, c) - _spreads(rows, c) for c in columns]
    return max(float(np.min(lows)) - 3, 0.0)
