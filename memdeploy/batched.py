"""Programming and scoring a whole population on one backend.

A simulated backend that offers `program_stack` and `select_stacked` (see
`StackedProgramming`) programs all candidates of a request in one vectorized pass
under the request's shared noise seed. Each candidate then runs its own forward
passes, with the digital steps after each crossbar layer fused (see
`memdeploy.crossbar_model`). Any other backend programs and scores candidate by
candidate. Both orders give the same fitness for the same genes and noise seed.

Forward passes stay per candidate because stacking them did not pay on the two-core
CPU of docs/benchmarks.md ("Fitness evaluation speed"). A grouped convolution over
ten stacked candidates ran no faster than ten separate convolutions, and
`torch.func.vmap` over stacked parameters ran the ProtoNet embedding 3.4 times
slower. Stacking would also have
multiplied the activation memory by the population size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from backends import ProgrammingStats
from memdeploy.crossbar_model import CrossbarModel
from memdeploy.tasks import EVAL_BATCH

logger = logging.getLogger(__name__)

ACTIVATION_BYTES = 12 * 2**20
"""Target size of the largest activation of one scoring forward call.

On the two-core CPU of docs/benchmarks.md ("Fitness evaluation speed"), scoring
ProtoNet on MNIST took about a third of the CPU time in batches of 62 images (12 MB
per 64-channel 28x28 activation) than in one batch of 1040 (209 MB). The allocator reuses blocks of the
smaller size, but it maps and unmaps the large ones for every tensor, and the page
faults cost more than the convolutions."""

STACK_BYTES = 256 * 2**20
"""Maximum bytes of programmed cells (two float32 values per crossbar weight) that
one `program_stack` call may hold; larger populations are programmed in groups."""


@runtime_checkable
class StackedProgramming(Protocol):
    """A backend that programs a stack of weight sets under one noise seed."""

    def program_stack(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int
    ) -> list[ProgrammingStats]: ...

    def select_stacked(self, index: int) -> None: ...


def eval_batch_size(model: torch.nn.Module, image_shape: tuple[int, ...]) -> int:
    """Return the images per scoring forward call that fit `ACTIVATION_BYTES`.

    One image runs through `model` (in eval mode) to find its largest activation.
    """
    largest = [math.prod(image_shape)]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output[0].numel())

    leaves = [module for module in model.modules() if not list(module.children())]
    hooks = [module.register_forward_hook(record) for module in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *image_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return int(np.clip(ACTIVATION_BYTES // (4 * largest[0]), 1, EVAL_BATCH))


@dataclass
class PopulationScores:
    """Fitness of every candidate and the wall time of each phase."""

    fitness: np.ndarray
    stats: list[ProgrammingStats]
    program_s: float
    inference_s: float


class PopulationScorer:
    """Programs each candidate and scores it with `score_programmed`.

    Args:
        crossbar: The model on its backend.
        score_programmed: Returns the fitness of whatever is programmed now.
    """

    def __init__(
        self, crossbar: CrossbarModel, score_programmed: Callable[[], float]
    ) -> None:
        self.crossbar = crossbar
        self.stacked = isinstance(crossbar.backend, StackedProgramming)
        self._score_programmed = score_programmed
        cells = sum(layer.cells for layer in crossbar.genome.crossbar_layers)
        self.group_size = max(1, STACK_BYTES // (4 * max(cells, 1)))
        logger.debug(
            "%s backend: %s programming, groups of up to %d candidates",
            crossbar.backend.name,
            "stacked" if self.stacked else "sequential",
            self.group_size,
        )

    def score(self, candidates: np.ndarray, noise_seed: int) -> PopulationScores:
        """Program and score every row of `candidates` under `noise_seed`."""
        scores = PopulationScores(np.empty(len(candidates)), [], 0.0, 0.0)
        for group in self._groups(len(candidates)):
            if self.stacked:
                started = time.perf_counter()
                scores.stats += self.crossbar.program_stack(
                    candidates[group], noise_seed=noise_seed
                )
                scores.program_s += time.perf_counter() - started
            for offset, row in enumerate(range(group.start, group.stop)):
                self._score_one(scores, candidates[row], row, offset, noise_seed)
        return scores

    def _groups(self, count: int) -> Iterator[slice]:
        size = self.group_size if self.stacked else max(count, 1)
        for start in range(0, count, size):
            yield slice(start, min(start + size, count))

    def _score_one(self, scores, genes, row, offset, noise_seed) -> None:
        started = time.perf_counter()
        if self.stacked:
            self.crossbar.select(offset, genes)
        else:
            scores.stats.append(self.crossbar.program(genes, noise_seed=noise_seed))
        programmed = time.perf_counter()
        scores.fitness[row] = self._score_programmed()
        scores.program_s += programmed - started
        scores.inference_s += time.perf_counter() - programmed
