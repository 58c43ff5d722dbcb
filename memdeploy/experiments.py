"""Experiments made of many optimize runs: resumable runs, cached weights, a control.

Each setting runs once per seed in its own run folder. A folder with `summary.json`
is read back and one with only `manifest.json` is resumed, both after checking their
settings against the requested ones. Runs that differ only in GA settings can share
float and baseline weights through a weight cache: the cache key covers every setting
that decides those weights, so the copies are what each run would train itself.

The control, noise-aware training alone, continues the baseline's noise-aware
training for as many steps as the GA spent (see `ga_compute_budget`) and is scored
exactly as the run scored its baseline: same backend, backend seed and noise draws.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from backends import open_backend
from memdeploy.errors import RunFolderError
from memdeploy.evaluation import LocalEvaluator
from memdeploy.genome import Genome
from memdeploy.manifest import check_resume_settings
from memdeploy.profiles import load_profile
from memdeploy.run import optimize
from memdeploy.runfolder import (
    atomic_write_bytes,
    load_weights,
    read_json,
    save_weights,
    write_json,
)
from memdeploy.settings import OptimizeSettings, make_settings
from memdeploy.training import train
from memdeploy.workload import prepare_model_and_task

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("float.safetensors", "baseline.safetensors")
WEIGHT_SETTINGS = (
    "model",
    "dataset",
    "data_dir",
    "limit",
    "profile",
    "seed",
    "checkpoint",
    "float_steps",
    "baseline_steps",
    "learning_rate",
)
"""Settings that decide the float and baseline weights of a run."""

FORWARD_PASSES_PER_STEP = 3
"""Cost of one training step in forward passes of its batch: the forward pass plus a
backward pass of about twice its cost (a rule of thumb, not a measurement)."""


def run_setting(
    settings: OptimizeSettings, run_dir: Path, *, weight_cache: Path | None = None
) -> dict:
    """Run an optimize job with `settings` in `run_dir` unless one finished there.

    Returns:
        The run's summary, read from `run_dir/summary.json`.

    Raises:
        RunFolderError: `run_dir` contains a run made with other settings.
    """
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        check_resume_settings(run_dir, settings, {})
        logger.info("%s is finished: reading its summary", run_dir)
        return read_json(run_dir / "summary.json")

    cache = weight_cache_folder(settings, weight_cache) if weight_cache else None
    if (run_dir / "manifest.json").exists():
        logger.info("resuming the interrupted run in %s", run_dir)
        optimize(settings, resume=run_dir, progress=False)
    else:
        # NOTE: this relies on optimize() loading float.safetensors and
        # baseline.safetensors that it finds in a new run folder, as it does on resume.
        if cache is not None:
            _copy_weights(cache, run_dir)
        optimize(settings, out=run_dir, progress=False)
    if cache is not None and not all((cache / name).exists() for name in WEIGHT_FILES):
        _copy_weights(run_dir, cache)
        write_json(cache / "settings.json", _weight_settings(settings))
    return read_json(run_dir / "summary.json")


def weight_cache_folder(settings: OptimizeSettings, cache_root: Path) -> Path:
    """Return the cache folder for the float and baseline weights of `settings`."""
    key = _weight_settings(settings)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8"))
    return (
        Path(cache_root)
        / f"{settings.model}-{settings.dataset}-{digest.hexdigest()[:12]}"
    )


def _weight_settings(settings: OptimizeSettings) -> dict:
    values = settings.model_dump(mode="json", include=set(WEIGHT_SETTINGS))
    return values | {"profile_sha256": load_profile(settings.profile).content_hash()}


def _copy_weights(source: Path, target: Path) -> None:
    if not all((source / name).exists() for name in WEIGHT_FILES):
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in WEIGHT_FILES:
        atomic_write_bytes(target / name, (source / name).read_bytes())
    logger.info("copied float and baseline weights from %s to %s", source, target)


@dataclass(frozen=True)
class ComputeBudget:
    """Training steps that match a GA run's compute, and how they were counted."""

    finetune_steps: int
    """population x (generations + 1) x fine-tuning steps per candidate."""

    forward_steps: int
    """The GA's validation forward passes, as training steps (0 when not counted)."""

    evaluations: int
    """Scoring passes: fitness evaluations (per draw and inference time) and
    finalist re-scorings."""

    validation_images: int
    images_per_step: int

    @property
    def total(self) -> int:
        """Steps the control trains."""
        return self.finetune_steps + self.forward_steps


def ga_compute_budget(
    settings: OptimizeSettings,
    validation_images: int,
    images_per_step: int,
    *,
    fitness_images: int | None = None,
    count_forward: bool = True,
) -> ComputeBudget:
    """Count the training steps that cost what a GA run with `settings` costs.

    Every candidate of generations 0 to `generations` is fine-tuned for
    `finetune_steps` steps and then scored on the fitness split (`fitness_images`
    images a pass, the validation split's when None), once per noise draw and
    inference time. At the end each finalist is scored on `selection_draws` more
    validation draws. A pass of V images counts as V / (3 x images per step)
    training steps, rounded up. Scoring the test split is left out, because the
    baseline's report pays it too.

    >>> settings = make_settings(population=4, generations=1, finetune_steps=2,
    ...                          finalists=2, selection_draws=2)
    >>> ga_compute_budget(settings, validation_images=96, images_per_step=64).total
    22
    """
    if fitness_images is None:
        fitness_images = validation_images
    passes = max(len(settings.inference_times_s), 1) * settings.fitness_draws
    fitness_passes = settings.population * (settings.generations + 1) * passes
    final_passes = settings.finalists * settings.selection_draws
    forward = 0
    if count_forward:
        images = fitness_passes * fitness_images + final_passes * validation_images
        forward = math.ceil(images / (FORWARD_PASSES_PER_STEP * images_per_step))
    finetune = (
        settings.population * (settings.generations + 1) * settings.finetune_steps
    )
    return ComputeBudget(
        finetune, forward, fitness_passes + final_passes, validation_images,
        images_per_step,
    )


def count_images(model, task, split: str = "validation") -> tuple[int, int]:
    """Return the images one pass over `split` and one training step run through `model`."""
    seen = [0]

    def counting_forward(images: torch.Tensor) -> torch.Tensor:
        seen[0] += len(images)
        return model(images)

    model.eval()
    with torch.inference_mode():
        task.accuracy(counting_forward, split)
        scored = seen[0]
        task.loss(counting_forward, task.sample_batch(np.random.default_rng(0)))
    return scored, seen[0] - scored


def noise_aware_alone(
    ga_run: Path, out_dir: Path, *, count_forward: bool = True
) -> dict:
    """Train the control for a finished GA run, unless done in `out_dir`; return it.

    The control starts from the run's baseline weights and trains with the same
    profile, learning rate and task (seed `seed + 2`, since the baseline used
    `seed + 1`), with a fresh Adam state because the run keeps none.
    """
    ga_run, out_dir = Path(ga_run), Path(out_dir)
    if (out_dir / "summary.json").exists():
        return _finished_control(out_dir, count_forward)
    manifest = read_json(ga_run / "manifest.json")
    summary = read_json(ga_run / "summary.json")
    settings = make_settings(**manifest["settings"])
    profile = load_profile(settings.profile)
    if profile.content_hash() != manifest["profile"]["sha256"]:
        raise RunFolderError(
            f"profile {settings.profile!r} changed since {ga_run} ran: restore the "
            "profile file or rerun the GA into a new folder"
        )

    model, task, _ = prepare_model_and_task(settings)
    model.load_state_dict(load_weights(ga_run / "baseline.safetensors"))
    baseline_scores = score_like_run(model, task, profile, settings, summary)
    validation_images, images_per_step = count_images(model, task)
    fitness_images, _ = count_images(model, task, settings.fitness_split)
    budget = ga_compute_budget(
        settings, validation_images, images_per_step,
        fitness_images=fitness_images, count_forward=count_forward,
    )

    logger.info("training the control for %d steps from %s", budget.total, ga_run)
    losses = train(
        model,
        task,
        steps=budget.total,
        lr=settings.learning_rate,
        seed=settings.seed + 2,
        profile=profile,
        log_every=max(budget.total // 5, 1),
    )
    result = score_like_run(model, task, profile, settings, summary) | {
        "steps": len(losses),
        "budget": asdict(budget) | {"counts_forward_passes": count_forward},
        "learning_rate": settings.learning_rate,
        "training_seed": settings.seed + 2,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "baseline_rescored": baseline_scores,
        "baseline_matches_run": baseline_scores["test_accuracies"]
        == summary["baseline"]["test_accuracies"],
    }
    if not result["baseline_matches_run"]:
        logger.warning(
            "rescoring the baseline of %s gave other test accuracies", ga_run
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(out_dir / "weights.safetensors", model.state_dict())
    write_json(out_dir / "summary.json", result)
    return result


def _finished_control(out_dir: Path, count_forward: bool) -> dict:
    result = read_json(out_dir / "summary.json")
    counted = result["budget"]["counts_forward_passes"]
    if counted != count_forward:
        raise RunFolderError(
            f"{out_dir} contains a control trained with counts_forward_passes="
            f"{counted}: pass the budget it used or choose another output folder"
        )
    logger.info("%s is finished: reading its summary", out_dir)
    return result


def score_like_run(
    model, task, profile, settings: OptimizeSettings, summary: dict
) -> dict:
    """Score `model` on the backend and noise draws that a run's summary records."""
    genes = Genome(model).vector(model)
    with open_backend(settings.backend, profile, seed=settings.seed) as backend:
        evaluator = LocalEvaluator(model, task, backend, profile, seed=settings.seed)
        validation = evaluator.accuracy(
            genes, "validation", summary["validation_seeds"]
        )
        test = evaluator.accuracy(genes, "test", summary["test_seeds"])
    return {
        "validation_accuracy": float(np.mean(validation)),
        "validation_accuracy_std": float(np.std(validation)),
        "validation_draws": len(validation),
        "test_accuracy": float(np.mean(test)),
        "test_accuracy_std": float(np.std(test)),
        "test_draws": len(test),
        "test_accuracies": [float(value) for value in test],
    }


def mean_std(values) -> tuple[float, float | None]:
    """Return the mean and the sample standard deviation (None for a single value).

    >>> [round(value, 4) for value in mean_std([0.5, 0.7])]
    [0.6, 0.1414]
    >>> mean_std([0.5])
    (0.5, None)
    """
    array = np.asarray(list(values), dtype=np.float64)
    spread = float(np.std(array, ddof=1)) if len(array) > 1 else None
    return float(np.mean(array)), spread
