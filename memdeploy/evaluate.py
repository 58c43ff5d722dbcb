"""Score a finished run's weights on any backend and profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends import open_backend, resolve_spec
from memdeploy.errors import RunFolderError
from memdeploy.evaluation import LocalEvaluator
from memdeploy.genome import Genome
from memdeploy.manifest import read_run_settings
from memdeploy.profiles import load_profile
from memdeploy.run import draw_seeds
from memdeploy.runfolder import load_weights
from memdeploy.workload import prepare_model_and_task

WEIGHT_FILES = {"best": "best.safetensors", "baseline": "baseline.safetensors"}


def evaluate_run(
    run_dir: str | Path,
    *,
    backend: str | None = None,
    profile: str | None = None,
    weights: str = "best",
    split: str = "test",
    draws: int = 10,
    seed: int | None = None,
) -> dict:
    """Program a run's weights and return their accuracy averaged over noise draws.

    Args:
        run_dir: A run folder written by `memdeploy optimize`.
        backend: Backend spec; default: the run's own.
        profile: Profile name or path; default: the run's own.
        weights: "best", "baseline", or a path to a state dictionary file.
        split: "test" or "validation".
        draws: Noise draws (programmings) to average over.
        seed: Seed of the draws; default: the run's seed. The data split always uses
            the run's seed, so the test split is the run's test split.
    """
    from memdeploy.weightmap import is_map_dir

    run_dir = Path(run_dir)
    if is_map_dir(run_dir) and weights == "best":
        weights = str(run_dir)
    settings = read_run_settings(run_dir)
    if split not in ("test", "validation"):
        raise ValueError(f"split {split!r} is not test or validation")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")

    model, task, _ = prepare_model_and_task(settings)
    if weights not in WEIGHT_FILES and is_map_dir(weights):
        return _evaluate_map(model, task, Path(weights), split, settings.seed)
    path = run_dir / WEIGHT_FILES[weights] if weights in WEIGHT_FILES else Path(weights)
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as err:
        raise RunFolderError(f"{path} does not fit model {settings.model!r}: {err}") from err
    model.eval()

    profile_model = load_profile(profile or settings.profile)
    spec = backend or settings.backend
    draw_seed = settings.seed if seed is None else seed
    genes = Genome(model).vector(model)
    with open_backend(spec, profile_model, seed=draw_seed) as opened:
        evaluator = LocalEvaluator(model, task, opened, profile_model, seed=draw_seed)
        accuracies = evaluator.accuracy(genes, split, draw_seeds(draw_seed, 2, draws))
    return {
        f"{split}_accuracy": float(np.mean(accuracies)),
        f"{split}_accuracy_std": float(np.std(accuracies)),
        "accuracies": [float(value) for value in accuracies],
        "draws": draws,
        "split": split,
        "seed": draw_seed,
        "backend": str(resolve_spec(spec)),
        "profile": profile_model.name,
        "weights": str(path),
    }


def _evaluate_map(model, task, map_dir: Path, split: str, seed: int) -> dict:
    """Accuracy of the weights a map holds, run digitally.

    A read-back map already carries the array's errors; programming it onto a backend
    would snap it back onto the levels and add noise a second time.
    """
    from memdeploy.evaluation import float_accuracy
    from memdeploy.weightmap import weights_from_map

    state, map_manifest = weights_from_map(map_dir, model=model)
    model.load_state_dict(state)
    accuracy = float_accuracy(model, task, split)
    return {
        f"{split}_accuracy": accuracy,
        f"{split}_accuracy_std": 0.0,
        "accuracies": [accuracy],
        "draws": 1,
        "split": split,
        "seed": seed,
        "backend": "none: the map's weights in the digital model",
        "profile": map_manifest["profile"]["name"],
        "weights": str(map_dir),
        "map_kind": map_manifest["kind"],
    }
