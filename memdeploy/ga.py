"""The genetic algorithm, on PyGAD, with crossbar-in-the-loop fitness.

Noisy fitness, decided here: every generation draws one noise seed (from which the
evaluator derives its draws when it averages several), and every member of the
population, elites included, is programmed and scored under it (common random
numbers). Members of one generation are therefore compared under identical noise,
and an elite cannot keep a lucky score from an earlier draw: PyGAD's fitness cache,
which would return an elite's old score, is bypassed by `CrossbarGA.cal_pop_fitness`.
The best candidate is chosen after the run by re-scoring the finalists on fresh
validation draws (see `memdeploy.run`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pygad

from memdeploy.evaluation import CandidateEvaluator, EvaluationRequest, EvaluationResult
from memdeploy.faults import bounded
from memdeploy.genome import Genome
from memdeploy.operators import (
    initial_population,
    make_add_noise_mutation,
    make_max_min_mutation,
    make_sigmoid_roulette,
    reference_models,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GASettings:
    """Genetic algorithm settings; defaults are the ProtoNet-MNIST ones of Zhang et al."""

    population: int = 10
    generations: int = 25
    selection: Literal["roulette", "rank"] = "roulette"
    sigmoid_steepness: float = 50.0
    crossover_probability: float = 0.8
    mutation: Literal["add-noise", "max-min"] = "max-min"
    mutation_probability: float = 0.01
    mutation_noise: float = 0.05
    """Standard deviation of the add-noise mutation, as a fraction of max|w| of the
    gene's layer."""

    init: Literal["origin", "large"] = "origin"
    elitism: int = 1


def generation_noise_seed(seed: int, generation: int) -> int:
    """Return the noise seed shared by every candidate of a generation."""
    return int(np.random.SeedSequence([seed, generation, 0xC0FFEE]).generate_state(1)[0])


@dataclass
class GenerationRecord:
    """What one generation's evaluation produced."""

    generation: int
    fitness: np.ndarray
    best_genes: np.ndarray
    elapsed_s: float
    result: EvaluationResult


@dataclass
class GAState:
    """Everything a checkpoint needs to continue a run exactly."""

    generation: int
    population: np.ndarray
    fitness: np.ndarray
    numpy_state: tuple
    python_state: tuple
    hall_of_fame: list[np.ndarray] = field(default_factory=list)
    hall_of_fame_fitness: list[float] = field(default_factory=list)


class CrossbarGA(pygad.GA):
    """PyGAD's GA with every member re-scored each generation under a shared draw."""

    def cal_pop_fitness(self):
        generation = self.generations_completed
        if self._pending_fitness is not None:
            fitness, self._pending_fitness = self._pending_fitness, None
            return fitness
        request = EvaluationRequest(
            candidates=np.array(self.population, dtype=np.float32),
            generation=generation,
            noise_seed=generation_noise_seed(self._run_seed, generation),
            candidate_ids=tuple(range(len(self.population))),
        )
        result = self._evaluator.evaluate(request)
        if result.candidates is not None:
            # Fine-tuned weights replace the candidates (written back explicitly:
            # in batch mode PyGAD hands the fitness function copies).
            self.population[:] = result.candidates
        self._on_evaluated(generation, result)
        return np.asarray(result.fitness, dtype=np.float64)


class GeneticOptimizer:
    """Runs the GA from a baseline gene vector against a candidate evaluator.

    Args:
        evaluator: Scores candidates (see `memdeploy.evaluation`).
        genome: Layout of the gene vector.
        baseline: Genes of the quantized, noise-aware baseline model.
        settings: GA settings.
        seed: Run seed; PyGAD's generators, the references and noise derive from it.
        on_generation: Called with a `GenerationRecord` and the `GAState` after every
            generation's evaluation, generation 0 (the initial population) included.
        gene_bounds: Per-gene (low, high) limits that the initial population and
            every mutation respect, such as those of a stuck-cell map.
    """

    def __init__(
        self,
        evaluator: CandidateEvaluator,
        genome: Genome,
        baseline: np.ndarray,
        settings: GASettings,
        seed: int,
        on_generation: Callable[[GenerationRecord, GAState], None] | None = None,
        gene_bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.genome = genome
        self.baseline = baseline.astype(np.float32)
        self.settings = settings
        self.seed = seed
        self.on_generation = on_generation
        self.gene_bounds = gene_bounds
        self.references = reference_models(genome, self.baseline, seed)
        self.hall_of_fame: list[np.ndarray] = []
        self.hall_of_fame_fitness: list[float] = []
        self._started = time.perf_counter()

    def _mutation(self):
        mutation = self._plain_mutation()
        if self.gene_bounds is None:
            return mutation
        return bounded(mutation, *self.gene_bounds)

    def _plain_mutation(self):
        settings = self.settings
        if settings.mutation == "add-noise":
            return make_add_noise_mutation(
                self.genome, self.baseline, settings.mutation_probability,
                settings.mutation_noise,
            )
        if settings.mutation == "max-min":
            return make_max_min_mutation(
                self.genome, *self.references, settings.mutation_probability
            )
        raise ValueError(f"unknown mutation {settings.mutation!r}: use add-noise or max-min")

    def _selection(self):
        if self.settings.selection == "roulette":
            return make_sigmoid_roulette(self.settings.sigmoid_steepness)
        if self.settings.selection == "rank":
            return "rank"
        raise ValueError(f"unknown selection {self.settings.selection!r}: use roulette or rank")

    def build(self, resume: GAState | None = None) -> CrossbarGA:
        """Create the PyGAD instance, fresh or continuing from a checkpoint state."""
        settings = self.settings
        if resume is None:
            population = initial_population(
                settings.init, self.baseline, self.references, settings.population, self.seed
            )
            if self.gene_bounds is not None:
                population = np.clip(population, *self.gene_bounds)
            generations = settings.generations
        else:
            population = resume.population.astype(np.float32)
            generations = settings.generations - resume.generation
        ga = CrossbarGA(
            num_generations=max(generations, 0),
            num_parents_mating=settings.population,
            fitness_func=_unused_fitness,
            fitness_batch_size=settings.population,
            initial_population=population,
            gene_type=np.float32,
            parent_selection_type=self._selection(),
            crossover_type="two_points",
            crossover_probability=settings.crossover_probability,
            mutation_type=self._mutation(),
            keep_elitism=settings.elitism,
            keep_parents=0,
            random_seed=self.seed,
            save_solutions=False,
            save_best_solutions=False,
            suppress_warnings=True,
        )
        ga._evaluator = self.evaluator
        ga._run_seed = self.seed
        ga._pending_fitness = None
        ga._on_evaluated = self._record
        if resume is not None:
            ga.generations_completed = resume.generation
            ga.numpy_random_generator.set_state(resume.numpy_state)
            ga.python_random_generator.setstate(resume.python_state)
            ga._pending_fitness = resume.fitness.astype(np.float64)
            self.hall_of_fame = list(resume.hall_of_fame)
            self.hall_of_fame_fitness = list(resume.hall_of_fame_fitness)
        self._ga = ga
        return ga

    def run(self, resume: GAState | None = None) -> CrossbarGA:
        """Run every remaining generation and return the finished PyGAD instance."""
        ga = self.build(resume)
        if resume is not None and ga.num_generations == 0:
            # Every generation finished before the interruption: nothing to run.
            ga.last_generation_fitness = resume.fitness.astype(np.float64)
            return ga
        ga.run()
        return ga

    def _record(self, generation: int, result: EvaluationResult) -> None:
        ga = self._ga
        best = int(np.argmax(result.fitness))
        best_genes = np.array(ga.population[best], dtype=np.float32)
        self.hall_of_fame.append(best_genes)
        self.hall_of_fame_fitness.append(float(result.fitness[best]))
        record = GenerationRecord(
            generation, np.asarray(result.fitness), best_genes,
            time.perf_counter() - self._started, result,
        )
        state = GAState(
            generation=generation,
            population=np.array(ga.population, dtype=np.float32),
            fitness=np.asarray(result.fitness, dtype=np.float64),
            numpy_state=ga.numpy_random_generator.get_state(),
            python_state=ga.python_random_generator.getstate(),
            hall_of_fame=self.hall_of_fame,
            hall_of_fame_fitness=self.hall_of_fame_fitness,
        )
        if self.on_generation is not None:
            self.on_generation(record, state)


def _unused_fitness(ga, solution, solution_idx):
    """PyGAD requires a fitness function; `CrossbarGA.cal_pop_fitness` replaces its use."""
    raise RuntimeError("CrossbarGA scores whole populations through its evaluator")


def seed_everything(seed: int) -> None:
    """Seed the global generators that PyGAD and torch code may touch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
