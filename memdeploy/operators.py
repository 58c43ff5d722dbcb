"""Genetic operators for weight-vector chromosomes, as PyGAD callables.

Selection callables take `(fitness, num_parents, ga)` and return `(parents, indices)`;
mutation callables take `(offspring, ga)` and return the mutated offspring. All draws
come from `ga.numpy_random_generator`, so a seeded GA repeats itself and a checkpoint
of that generator's state resumes it exactly. Every operator is vectorised over the
whole offspring array: weight vectors have 10^4 to 10^6 genes.
"""

from __future__ import annotations

import numpy as np

from memdeploy.genome import Genome

REFERENCE_NOISE = (0.05, 0.10)
"""Noise of the two reference models of the max-min mutation and the "large" init,
as fractions of each parameter tensor's max|w|."""


def sigmoid_weights(fitness: np.ndarray, steepness: float) -> np.ndarray:
    """Return roulette weights: a sigmoid of each fitness's share of the total.

    A candidate's share is r = f / sum(f); the weight is sigmoid(steepness x
    (N r - 1)), where N r - 1 is the candidate's relative distance from the mean
    fitness. Plain roulette on accuracies of 0.80 and 0.82 picks both about
    equally; with steepness 50 their weights are 0.35 and 0.65.

    >>> np.round(sigmoid_weights(np.array([0.8, 0.82]), 50.0), 2).tolist()
    [0.35, 0.65]
    """
    fitness = np.asarray(fitness, dtype=np.float64)
    total = fitness.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(len(fitness), 1.0 / len(fitness))
    relative = len(fitness) * fitness / total - 1.0
    return 1.0 / (1.0 + np.exp(-steepness * relative))


def make_sigmoid_roulette(steepness: float = 50.0):
    """Return a roulette-wheel selection on sigmoid-scaled fitness shares."""

    def select(fitness, num_parents, ga):
        weights = sigmoid_weights(fitness, steepness)
        probabilities = weights / weights.sum()
        indices = ga.numpy_random_generator.choice(
            len(fitness), size=num_parents, replace=True, p=probabilities
        )
        return ga.population[indices, :].copy(), indices

    select.__name__ = "sigmoid_roulette_selection"
    return select


def layer_max_abs(genome: Genome, genes: np.ndarray) -> np.ndarray:
    """Return, for every gene, max|w| of the parameter tensor it belongs to."""
    per_block = genome.per_block(np.abs(genes), np.max)
    return per_block[genome.block_index()].astype(np.float32)


def make_add_noise_mutation(
    genome: Genome, baseline: np.ndarray, probability: float, noise: float = 0.05
):
    """Return a mutation adding Gaussian noise of `noise` x max|w| of the gene's
    layer (in the baseline) to each gene with probability `probability`."""
    sigma = noise * layer_max_abs(genome, baseline)

    def mutate(offspring, ga):
        rng = ga.numpy_random_generator
        mask = rng.random_sample(offspring.shape) < probability
        rows, cols = np.nonzero(mask)
        offspring[rows, cols] += (rng.standard_normal(len(rows)) * sigma[cols]).astype(
            offspring.dtype
        )
        return offspring

    mutate.__name__ = "add_noise_mutation"
    return mutate


def reference_models(
    genome: Genome, baseline: np.ndarray, seed: int, noise=REFERENCE_NOISE
) -> tuple[np.ndarray, np.ndarray]:
    """Return the baseline with each of two noise levels added (p x max|w| per layer)."""
    rng = np.random.default_rng([seed, 0x5EED])
    scale = layer_max_abs(genome, baseline)
    return tuple(
        (baseline + rng.standard_normal(baseline.shape) * level * scale).astype(np.float32)
        for level in noise
    )


def max_min_bounds(genome: Genome, first: np.ndarray, second: np.ndarray):
    """Return per-gene bounds: the min and max over both models of the gene's layer."""
    low = np.minimum(genome.per_block(first, np.min), genome.per_block(second, np.min))
    high = np.maximum(genome.per_block(first, np.max), genome.per_block(second, np.max))
    index = genome.block_index()
    return low[index].astype(np.float32), high[index].astype(np.float32)


def make_max_min_mutation(
    genome: Genome, first: np.ndarray, second: np.ndarray, probability: float
):
    """Return the random max-min mutation between two reference models.

    Each gene, with probability `probability`, is replaced by a uniform draw between
    the smallest and the largest weight of its layer over both reference models.
    """
    low, high = max_min_bounds(genome, first, second)

    def mutate(offspring, ga):
        rng = ga.numpy_random_generator
        mask = rng.random_sample(offspring.shape) < probability
        rows, cols = np.nonzero(mask)
        draws = rng.uniform(low[cols], high[cols]).astype(offspring.dtype)
        offspring[rows, cols] = draws
        return offspring

    mutate.__name__ = "max_min_mutation"
    return mutate


def initial_population(
    kind: str,
    baseline: np.ndarray,
    references: tuple[np.ndarray, np.ndarray],
    size: int,
    seed: int,
) -> np.ndarray:
    """Return the first population.

    "origin": every member is the baseline. "large": the first member is the
    baseline; each gene of every other member is drawn uniformly between the two
    reference models' values of that gene.
    """
    population = np.repeat(baseline[None, :].astype(np.float32), size, axis=0)
    if kind == "origin":
        return population
    if kind != "large":
        raise ValueError(f"unknown population init {kind!r}: use origin or large")
    rng = np.random.default_rng([seed, 0x1417])
    low = np.minimum(*references)
    high = np.maximum(*references)
    population[1:] = rng.uniform(low, high, size=(size - 1, baseline.size))
    return population
