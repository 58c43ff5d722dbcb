"""The optimize job: float model, quantized baseline, GA, final choice, run folder.

Accuracy reporting is honest by construction. The GA's fitness scores the training
or the validation split (`fitness_split`), and the final choice among the finalists
and the baseline scores the validation split. The test split is scored once at the
end, for the float model, the baseline and the chosen weights, on the same noise
draws.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from backends import open_backend, resolve_spec
from memdeploy.errors import RunFolderError
from memdeploy.evaluation import LocalEvaluator, float_accuracy
from memdeploy.faults import count_stuck, reachable_bounds
from memdeploy.ga import GAState, GenerationRecord, GeneticOptimizer, seed_everything
from memdeploy.genome import Genome
from memdeploy.manifest import build_manifest, check_resume_settings
from memdeploy.profiles import load_profile
from memdeploy.runfolder import (
    CANDIDATE_FIELDS,
    HISTORY_FIELDS,
    load_checkpoint,
    load_weights,
    read_csv,
    read_json,
    remove_stale_temporaries,
    save_checkpoint,
    save_weights,
    write_csv,
    write_json,
)
from memdeploy.settings import DEFAULT_STEPS, OptimizeSettings, make_settings
from memdeploy.workload import prepare_model_and_task

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """A finished run's folder and its summary."""

    run_dir: Path
    summary: dict


def draw_seeds(seed: int, purpose: int, count: int) -> list[int]:
    """Return `count` noise seeds for a purpose (1 validation choice, 2 test)."""
    states = np.random.SeedSequence([seed, purpose, 0xD2A5]).generate_state(count)
    return [int(value) for value in states]


def default_run_dir(settings: OptimizeSettings) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = settings.model.replace(":", "-").replace(".", "-")
    return Path("runs") / f"{stamp}-{name}-{settings.dataset}-seed{settings.seed}"


def optimize(
    settings: OptimizeSettings | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    **overrides,
) -> RunResult:
    """Run the GA training method end to end and write a run folder.

    Args:
        settings: All settings; keywords in `overrides` replace single ones.
        out: Run folder to create (default: `runs/<time>-<model>-<dataset>-seed<N>`).
        resume: A run folder to continue; settings given explicitly must match it.
        progress: Show a progress bar.
    """
    if resume is not None:
        run_dir = Path(resume)
        settings = check_resume_settings(run_dir, settings, overrides)
        for stale in remove_stale_temporaries(run_dir):
            logger.info("removed %s, left by the interrupted run", stale)
    else:
        base = settings.model_dump() if settings is not None else {}
        settings = make_settings(**(base | overrides))
        run_dir = Path(out) if out is not None else default_run_dir(settings)
        _refuse_existing_run(run_dir)

    seed_everything(settings.seed)
    profile = load_profile(settings.profile)
    # Data and backend come first, so that a missing dataset or an unreachable
    # array fails before training and leaves no run folder behind.
    model, task, data = prepare_model_and_task(settings)
    backend = open_backend(settings.backend, profile, seed=settings.seed)
    with backend:
        if resume is None:
            _claim_run_dir(run_dir)
        manifest = build_manifest(settings, profile, data, status="running")
        if resume is not None:
            _check_profile_unchanged(run_dir, manifest)
        write_json(run_dir / "manifest.json", manifest)

        float_model = _float_model(model, task, settings, run_dir)
        baseline_model = _baseline_model(float_model, task, profile, settings, run_dir)
        genome = Genome(baseline_model)
        baseline = genome.vector(baseline_model)

        evaluator = LocalEvaluator(
            baseline_model, task, backend, profile, settings.fitness_settings(), settings.seed
        )
        stuck_maps = backend.stuck_cells()
        stuck = count_stuck(stuck_maps)
        bounds = None
        if stuck and settings.fault_aware:
            bounds = reachable_bounds(genome, stuck_maps, baseline)
            logger.warning("%d stuck cells: their genes are limited to reachable values", stuck)
        state = _resume_state(run_dir) if resume is not None else None
        history = _GenerationLog(run_dir, settings, progress, state)
        optimizer = GeneticOptimizer(
            evaluator, genome, baseline, settings.ga_settings(), settings.seed,
            on_generation=history.record, gene_bounds=bounds,
        )
        try:
            ga = optimizer.run(resume=state)
        finally:
            history.close()
        finalists = _finalists(optimizer, ga, settings.finalists)
        summary = _choose_and_report(
            evaluator, task, float_model, baseline, finalists, settings
        )
        summary["stuck_cells"] = stuck
        summary["fault_aware"] = bounds is not None
        summary["ga_time"] = _ga_time(history.history)

    genome.load(baseline_model, summary.pop("_best_genes"))
    save_weights(run_dir / "best.safetensors", baseline_model.state_dict())
    save_weights(run_dir / "best.pt", baseline_model.state_dict())
    write_json(run_dir / "summary.json", summary)
    _plot(run_dir)
    write_json(run_dir / "manifest.json", manifest | {"status": "finished"})
    logger.info("run finished: %s", run_dir)
    return RunResult(run_dir, summary)


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / "manifest.json").exists():
        raise RunFolderError(
            f"{run_dir} already holds a run: resume it with --resume {run_dir} or "
            "choose another --out"
        )


def _claim_run_dir(run_dir: Path) -> None:
    _refuse_existing_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_profile_unchanged(run_dir: Path, manifest: dict) -> None:
    stored = read_json(run_dir / "manifest.json")
    entry = stored.get("profile")
    old = entry.get("sha256") if isinstance(entry, dict) else None
    new = manifest["profile"]["sha256"]
    if old != new:
        raise RunFolderError(
            f"cannot resume {run_dir}: profile {manifest['settings']['profile']!r} "
            f"changed since the run started (hash {str(old)[:12]} then, {new[:12]} "
            "now); restore the profile file or start a new run"
        )


def _float_model(model, task, settings: OptimizeSettings, run_dir: Path):
    path = run_dir / "float.safetensors"
    if path.exists():
        model.load_state_dict(load_weights(path))
        return model.eval()
    if settings.checkpoint:
        model.load_state_dict(load_weights(Path(settings.checkpoint)))
    else:
        steps = _steps(settings.float_steps, settings.model, 0)
        from memdeploy.training import train

        train(model, task, steps=steps, lr=settings.learning_rate, seed=settings.seed,
              log_every=max(steps // 5, 1))
    save_weights(path, model.state_dict())
    return model.eval()


def _baseline_model(float_model, task, profile, settings, run_dir: Path):
    import copy

    from memdeploy.training import train

    baseline = copy.deepcopy(float_model)
    path = run_dir / "baseline.safetensors"
    if path.exists():
        baseline.load_state_dict(load_weights(path))
        return baseline.eval()
    steps = _steps(settings.baseline_steps, settings.model, 1)
    train(baseline, task, steps=steps, lr=settings.learning_rate, seed=settings.seed + 1,
          profile=profile, log_every=max(steps // 5, 1))
    save_weights(path, baseline.state_dict())
    return baseline.eval()


def _steps(configured: int | None, model: str, which: int) -> int:
    if configured is not None:
        return configured
    return DEFAULT_STEPS.get(model, (1000, 500))[which]


def _resume_state(run_dir: Path) -> GAState | None:
    """Load the checkpointed GA state, or return None when no generation finished."""
    path = run_dir / "checkpoint.npz"
    if not path.exists():
        logger.info("%s has no checkpoint yet: the GA starts from generation 0", run_dir)
        return None
    return load_checkpoint(path)


class _GenerationLog:
    """Writes history, candidate rows and the checkpoint after every generation.

    On resume it keeps only the rows up to the checkpoint's generation: a run killed
    between writing the history and the checkpoint redoes that generation.
    """

    def __init__(
        self, run_dir: Path, settings: OptimizeSettings, progress: bool, state: GAState | None
    ):
        self.run_dir = run_dir
        self.fitness_split = settings.fitness_split
        self._warned_saturation = False
        self.history, self.candidates = [], []
        if state is not None:
            def kept(rows):
                return [row for row in rows if int(row["generation"]) <= state.generation]

            self.history = kept(read_csv(run_dir / "history.csv"))
            self.candidates = kept(read_csv(run_dir / "candidates.csv"))
        done = len(self.history)
        self.bar = tqdm(
            total=settings.generations + 1, initial=done, disable=not progress,
            desc="generation", unit="gen",
        )
        self._offset = float(self.history[-1]["elapsed_s"]) if self.history else 0.0
        self._started = time.perf_counter()

    def record(self, record: GenerationRecord, state: GAState) -> None:
        result = record.result
        totals = sum(result.stats[1:], result.stats[0]) if result.stats else None
        fitness = record.fitness
        if fitness.size and fitness.min() >= 1.0 and not self._warned_saturation:
            self._warned_saturation = True
            logger.warning(
                "every candidate of generation %d scored 100%% on the %s split, so the "
                "fitness cannot rank them: score another split (--fitness-split "
                "validation) or average more draws (--fitness-draws)",
                record.generation, self.fitness_split,
            )
        elapsed = self._offset + time.perf_counter() - self._started
        previous = float(self.history[-1]["elapsed_s"]) if self.history else 0.0
        passes = result.seconds.get("finetune", 0.0) + result.seconds.get("inference", 0.0)
        self.history.append({
            "generation": record.generation,
            "best_fitness": float(fitness.max()),
            "mean_fitness": float(fitness.mean()),
            "min_fitness": float(fitness.min()),
            "elapsed_s": round(elapsed, 3),
            "cells_programmed": totals.cells_written if totals else 0,
            "pulses": totals.pulses if totals else 0,
            "bytes_on_link": (totals.bytes_sent + totals.bytes_received) if totals else 0,
            "link_time_s": totals.link_time_s if totals else 0.0,
            **{f"{phase}_s": round(value, 4) for phase, value in result.seconds.items()},
            # Wall time outside forward and backward passes: GA operators,
            # programming, bookkeeping.
            "generation_s": round(elapsed - previous, 4),
            "overhead_s": round(max(elapsed - previous - passes, 0.0), 4),
        })
        for index, (score, stats) in enumerate(zip(fitness, result.stats)):
            self.candidates.append(
                {"generation": record.generation, "candidate": index, "fitness": float(score)}
                | stats.as_dict()
            )
        write_csv(self.run_dir / "history.csv", HISTORY_FIELDS, self.history)
        write_csv(self.run_dir / "candidates.csv", CANDIDATE_FIELDS, self.candidates)
        save_checkpoint(self.run_dir / "checkpoint.npz", state)
        self.bar.set_postfix(best=f"{fitness.max():.4f}", mean=f"{fitness.mean():.4f}")
        self.bar.update(1)
        logger.info(
            "generation %d: best %.4f, mean %.4f, min %.4f",
            record.generation, fitness.max(), fitness.mean(), fitness.min(),
        )

    def close(self) -> None:
        self.bar.close()


def _ga_time(rows: list[dict]) -> dict:
    """Sum the GA's wall time by phase over the history rows."""
    phases = ("generation", "finetune", "inference", "program", "overhead")
    totals = {
        f"{phase}_s": round(sum(float(row.get(f"{phase}_s") or 0.0) for row in rows), 3)
        for phase in phases
    }
    wall = totals["generation_s"]
    totals["outside_passes_fraction"] = (
        round(totals["overhead_s"] / wall, 4) if wall > 0 else None
    )
    return totals


def _finalists(optimizer: GeneticOptimizer, ga, count: int) -> list[np.ndarray]:
    """Return the best distinct candidates among generation bests and the last population."""
    pool = list(zip(optimizer.hall_of_fame_fitness, optimizer.hall_of_fame))
    pool += list(zip(ga.last_generation_fitness, np.asarray(ga.population, dtype=np.float32)))
    pool.sort(key=lambda item: -float(item[0]))
    chosen: list[np.ndarray] = []
    for _, genes in pool:
        if not any(np.array_equal(genes, other) for other in chosen):
            chosen.append(np.array(genes, dtype=np.float32))
        if len(chosen) == count:
            break
    return chosen


def _choose_and_report(evaluator, task, float_model, baseline, finalists, settings) -> dict:
    """Pick the finalist with the best mean validation accuracy; score the test split.

    The baseline competes too: when no finalist beats it on validation, the
    baseline is deployed, and the summary's `chosen` records which won.
    """
    validation_seeds = draw_seeds(settings.seed, 1, settings.selection_draws)
    test_seeds = draw_seeds(settings.seed, 2, settings.test_draws)
    validations = [evaluator.accuracy(g, "validation", validation_seeds) for g in finalists]
    scores = [np.mean(validation) for validation in validations]
    baseline_validation = evaluator.accuracy(baseline, "validation", validation_seeds)
    baseline_score = np.mean(baseline_validation)
    if finalists and max(scores) > baseline_score:
        index = int(np.argmax(scores))
        best, best_validation, chosen = finalists[index], validations[index], "ga"
    else:
        best, best_validation, chosen = baseline, baseline_validation, "baseline"
        logger.warning(
            "no GA candidate beat the baseline on validation (%.4f): the baseline "
            "is kept as the best weights", baseline_score,
        )

    def entry(genes, validation: list[float]) -> dict:
        test = evaluator.accuracy(genes, "test", test_seeds)
        return {
            "validation_accuracy": float(np.mean(validation)),
            "validation_accuracy_std": float(np.std(validation)),
            "validation_draws": len(validation),
            "test_accuracy": float(np.mean(test)),
            "test_accuracy_std": float(np.std(test)),
            "test_draws": len(test),
            "test_accuracies": [float(v) for v in test],
        }

    float_entry = {
        "validation_accuracy": float_accuracy(float_model, task, "validation"),
        "test_accuracy": float_accuracy(float_model, task, "test"),
        "test_draws": 1,
        "note": "float weights on no crossbar: no noise to draw",
    }
    return {
        "float": float_entry,
        "baseline": entry(baseline, baseline_validation),
        "best": entry(best, best_validation),
        "seed": settings.seed,
        "split_seed": settings.seed,
        "backend": str(resolve_spec(settings.backend)),
        "profile": settings.profile,
        "validation_seeds": validation_seeds,
        "test_seeds": test_seeds,
        "finalists_validation_accuracy": [float(s) for s in scores],
        "chosen": chosen,
        "_best_genes": best,
    }


def _plot(run_dir: Path) -> None:
    from memdeploy.plots import plot_fitness

    plot_fitness(read_csv(run_dir / "history.csv"), run_dir / "fitness.png")
