"""Candidate evaluation: the one seam between the GA and the crossbars.

The GA hands an `EvaluationRequest` (a batch of gene vectors, the generation, and the
noise seed every candidate of the generation shares) to a `CandidateEvaluator` and
gets an `EvaluationResult` back. Both are plain data, so a pool of workers, each with
its own backend and chip, can serve the same interface as `LocalEvaluator` does in
process.

A candidate's fitness: optional noise-aware fine-tuning on the training split (written
back into the candidate when asked), then programming onto the backend and accuracy
on the fitness split (training or validation), averaged over the request's noise
draws. The test split is never touched here. A simulator that
programs stacks of weight sets gets the whole request in one programming pass (see
`memdeploy.batched`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from backends import CrossbarBackend, ProgrammingStats
from memdeploy.batched import PopulationScorer, StackedProgramming, eval_batch_size
from memdeploy.crossbar_model import CrossbarModel, fold_for_finetuning
from memdeploy.profiles import DeviceProfile
from memdeploy.training import train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitnessSettings:
    """How a candidate is scored."""

    finetune_steps: int = 0
    """Noise-aware training steps (minibatches or episodes) before scoring."""

    finetune_lr: float = 1e-3
    write_back: bool = True
    """Whether the fine-tuned weights replace the candidate's genes (Lamarckian).
    Either way the fine-tuned weights are what gets programmed and scored."""

    inference_times_s: tuple[float, ...] = ()
    """Score at each of these times after programming (drifting backends); empty
    scores at the profile's `t_inference_s` only."""

    time_combine: Literal["mean", "min"] = "mean"
    """How the scores at several inference times combine into one fitness."""

    split: Literal["validation", "train"] = "validation"
    """The split whose accuracy is the fitness; the test split is not an option."""

    noise_draws: int = 1
    """Programming draws each candidate is scored on; the fitness is their mean.
    Every candidate of a request gets the same draws (common random numbers)."""


@dataclass(frozen=True)
class EvaluationRequest:
    """A batch of candidates to score under one shared noise draw."""

    candidates: np.ndarray
    """Gene vectors, shape (n, genes), float32."""

    generation: int
    noise_seed: int
    candidate_ids: tuple[int, ...]
    """Position of each candidate in the population; seeds its fine-tuning."""


@dataclass
class EvaluationResult:
    """Fitness per candidate, and what producing it cost."""

    fitness: np.ndarray
    candidates: np.ndarray | None
    """Fine-tuned gene vectors when write-back is on, else None."""

    stats: list[ProgrammingStats]
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase: finetune (forward and backward), program, inference."""


class CandidateEvaluator(Protocol):
    """Anything that scores candidates: in process, or a pool of workers."""

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult: ...

    def close(self) -> None: ...


class LocalEvaluator:
    """Scores candidates in this process on one backend.

    Args:
        model: The model architecture; its weights are replaced by each candidate's.
        task: The task that trains and scores the model.
        backend: A backend opened for `profile`; the evaluator calls `setup` on it.
        profile: The profile that noise-aware fine-tuning trains against.
        settings: How candidates are scored.
        seed: Run seed, from which fine-tuning draws are derived.
    """

    def __init__(
        self,
        model: nn.Module,
        task,
        backend: CrossbarBackend,
        profile: DeviceProfile,
        settings: FitnessSettings = FitnessSettings(),
        seed: int = 0,
    ) -> None:
        self.task = task
        self.profile = profile
        self.settings = settings
        self.seed = seed
        stacked = isinstance(backend, StackedProgramming)
        self.crossbar = CrossbarModel(model, backend, fuse_digital=stacked)
        self.genome = self.crossbar.genome
        self.scorer = PopulationScorer(self.crossbar, self._fitness_score)
        self._trainee = fold_for_finetuning(model)
        self.eval_batch = eval_batch_size(self._trainee, task.data.image_shape)
        times = settings.inference_times_s
        if times and not backend.capabilities.drift:
            logger.warning(
                "the %s backend models no drift: inference times %s are ignored",
                backend.name, times,
            )
            times = ()
        self._times = times
        if self._finetunes:
            # The first Adam of a process imports torch._dynamo (seconds), which would
            # otherwise count as fine-tuning time in the first generation scored here.
            torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    @property
    def backend(self) -> CrossbarBackend:
        """The backend candidates are programmed onto."""
        return self.crossbar.backend

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """Score every candidate of the request under its shared noise seed."""
        seconds = {"finetune": 0.0, "program": 0.0, "inference": 0.0}
        candidates = request.candidates
        if self._finetunes:
            started = time.perf_counter()
            keys = [(request.generation, index) for index in request.candidate_ids]
            candidates = np.stack(
                [self.finetune(genes, key) for genes, key in zip(candidates, keys)]
            )
            seconds["finetune"] = time.perf_counter() - started

        fitness = np.zeros(len(candidates))
        stats = []
        for noise_seed in draw_noise_seeds(request.noise_seed, self.settings.noise_draws):
            scores = self.scorer.score(candidates, noise_seed)
            fitness += scores.fitness / self.settings.noise_draws
            stats = scores.stats if not stats else [a + b for a, b in zip(stats, scores.stats)]
            seconds["program"] += scores.program_s
            seconds["inference"] += scores.inference_s
        write_back = self._finetunes and self.settings.write_back
        written_back = candidates if write_back else None
        return EvaluationResult(fitness, written_back, stats, seconds)

    @property
    def _finetunes(self) -> bool:
        return self.settings.finetune_steps > 0

    def finetune(self, genes: np.ndarray, key: tuple[int, int]) -> np.ndarray:
        """Run noise-aware training steps from `genes` and return the new genes.

        `key` (generation, candidate index) seeds the training draws.
        """
        # A copy, because the loaded parameters share memory with the array.
        self.genome.load(self._trainee, np.array(genes, dtype=np.float32))
        train(
            self._trainee,
            self.task,
            steps=self.settings.finetune_steps,
            lr=self.settings.finetune_lr,
            seed=int(np.random.SeedSequence([self.seed, *key]).generate_state(1)[0]),
            profile=self.profile,
            batch_norm_updates=False,
        )
        return self.genome.vector(self._trainee)

    def _fitness_score(self) -> float:
        """Return the programmed candidate's accuracy on the fitness split, combined
        over the inference times."""
        scores = []
        for t_s in self._times or (None,):
            if t_s is not None:
                self.backend.set_inference_time(t_s)
            scores.append(
                self.task.accuracy(self.crossbar, self.settings.split, self.eval_batch)
            )
        if not self._times:
            return scores[0]
        self.backend.set_inference_time(self.profile.drift.t_inference_s)
        combine = min if self.settings.time_combine == "min" else np.mean
        return float(combine(scores))

    def accuracy(self, genes: np.ndarray, split: str, noise_seeds) -> list[float]:
        """Accuracy of one gene vector on `split`, one value per noise seed."""
        results = []
        for noise_seed in noise_seeds:
            self.crossbar.program(genes, noise_seed=int(noise_seed))
            results.append(self.task.accuracy(self.crossbar, split, self.eval_batch))
        return results

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()


def draw_noise_seeds(noise_seed: int, count: int) -> list[int]:
    """Return `count` noise seeds for one request; the first is `noise_seed` itself."""
    extra = np.random.SeedSequence([noise_seed, 0x5EED]).generate_state(max(count - 1, 0))
    return [int(noise_seed), *(int(value) for value in extra)]


def float_accuracy(model: nn.Module, task, split: str) -> float:
    """Accuracy of the float model, without any crossbar."""
    model.eval()
    with torch.inference_mode():
        return task.accuracy(model, split)
