"""GA operators against seeded numpy references."""

from __future__ import annotations

import numpy as np
import pygad
import pytest
import torch

from memdeploy.genome import Genome
from memdeploy.operators import (
    initial_population,
    layer_max_abs,
    make_add_noise_mutation,
    make_max_min_mutation,
    make_sigmoid_roulette,
    max_min_bounds,
    reference_models,
    sigmoid_weights,
)


class _FakeGA:
    """The two attributes PyGAD hands custom operators."""

    def __init__(self, population, seed=0):
        self.population = population
        self.numpy_random_generator = np.random.RandomState(seed)


def _genome_and_baseline(model):
    genome = Genome(model)
    return genome, genome.vector(model)


def test_sigmoid_weights_follow_formula():
    fitness = np.array([0.5, 0.6, 0.9])
    relative = len(fitness) * fitness / fitness.sum() - 1.0
    expected = 1.0 / (1.0 + np.exp(-10.0 * relative))
    assert np.allclose(sigmoid_weights(fitness, 10.0), expected)


def test_sigmoid_weights_of_zero_fitness_are_uniform():
    assert np.allclose(sigmoid_weights(np.zeros(4), 50.0), 0.25)


def test_sigmoid_roulette_matches_seeded_reference():
    population = np.arange(12, dtype=np.float32).reshape(4, 3)
    fitness = np.array([0.80, 0.82, 0.78, 0.90])
    parents, indices = make_sigmoid_roulette(50.0)(fitness, 6, _FakeGA(population, 7))

    weights = sigmoid_weights(fitness, 50.0)
    reference = np.random.RandomState(7).choice(4, size=6, p=weights / weights.sum())
    assert indices.tolist() == reference.tolist()
    assert np.array_equal(parents, population[reference])


def test_sigmoid_roulette_prefers_fitter_candidates():
    population = np.zeros((3, 2), dtype=np.float32)
    fitness = np.array([0.80, 0.82, 0.84])
    _, indices = make_sigmoid_roulette(50.0)(fitness, 20000, _FakeGA(population))
    counts = np.bincount(indices, minlength=3)
    assert counts[2] > counts[1] > counts[0]


def test_add_noise_mutation_matches_seeded_reference(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    offspring = np.repeat(baseline[None], 5, axis=0)
    mutate = make_add_noise_mutation(genome, baseline, probability=0.3, noise=0.05)
    mutated = mutate(offspring.copy(), _FakeGA(offspring, 3))

    reference = np.random.RandomState(3)
    mask = reference.random_sample(offspring.shape) < 0.3
    rows, cols = np.nonzero(mask)
    sigma = 0.05 * layer_max_abs(genome, baseline)
    expected = offspring.copy()
    expected[rows, cols] += (reference.standard_normal(len(rows)) * sigma[cols]).astype(np.float32)
    assert np.array_equal(mutated, expected)


def test_add_noise_mutation_scales_noise_per_layer(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    offspring = np.repeat(baseline[None], 4000, axis=0)
    mutate = make_add_noise_mutation(genome, baseline, probability=1.0, noise=0.05)
    change = mutate(offspring.copy(), _FakeGA(offspring, 0)) - offspring
    first = genome.blocks[0]
    expected = 0.05 * np.abs(baseline[first.start : first.stop]).max()
    measured = change[:, first.start : first.stop].std()
    assert measured == pytest.approx(expected, rel=0.03)


def test_max_min_mutation_matches_seeded_reference(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    first, second = reference_models(genome, baseline, seed=0)
    offspring = np.repeat(baseline[None], 5, axis=0)
    mutate = make_max_min_mutation(genome, first, second, probability=0.2)
    mutated = mutate(offspring.copy(), _FakeGA(offspring, 9))

    reference = np.random.RandomState(9)
    mask = reference.random_sample(offspring.shape) < 0.2
    rows, cols = np.nonzero(mask)
    low, high = max_min_bounds(genome, first, second)
    expected = offspring.copy()
    expected[rows, cols] = reference.uniform(low[cols], high[cols]).astype(np.float32)
    assert np.array_equal(mutated, expected)


def test_max_min_bounds_span_both_models_per_layer(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    first, second = reference_models(genome, baseline, seed=0)
    low, high = max_min_bounds(genome, first, second)
    for block in genome.blocks:
        both = np.concatenate([first[block.start : block.stop], second[block.start : block.stop]])
        assert np.all(low[block.start : block.stop] == both.min())
        assert np.all(high[block.start : block.stop] == both.max())


def test_max_min_mutation_rate_matches_probability(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    first, second = reference_models(genome, baseline, seed=0)
    offspring = np.repeat(baseline[None], 2000, axis=0)
    mutate = make_max_min_mutation(genome, first, second, probability=0.01)
    changed = (mutate(offspring.copy(), _FakeGA(offspring, 1)) != offspring).mean()
    assert changed == pytest.approx(0.01, rel=0.1)


def test_reference_models_carry_five_and_ten_percent_noise(tiny_mlp):
    model = torch.nn.Linear(200, 100)
    genome, baseline = _genome_and_baseline(model)
    first, second = reference_models(genome, baseline, seed=0)
    weight = genome.blocks[0]
    scale = np.abs(baseline[weight.start : weight.stop]).max()
    first_noise = (first - baseline)[weight.start : weight.stop].std() / scale
    second_noise = (second - baseline)[weight.start : weight.stop].std() / scale
    assert first_noise == pytest.approx(0.05, rel=0.03)
    assert second_noise == pytest.approx(0.10, rel=0.03)


def test_origin_init_copies_baseline(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    population = initial_population("origin", baseline, (baseline, baseline), 6, seed=0)
    assert population.shape == (6, genome.size)
    assert np.all(population == baseline)


def test_large_init_keeps_baseline_first_and_stays_between_references(tiny_mlp):
    genome, baseline = _genome_and_baseline(tiny_mlp)
    references = reference_models(genome, baseline, seed=0)
    population = initial_population("large", baseline, references, 6, seed=0)
    low, high = np.minimum(*references), np.maximum(*references)
    assert np.array_equal(population[0], baseline)
    assert np.all(population[1:] >= low - 1e-7)
    assert np.all(population[1:] <= high + 1e-7)
    assert not np.array_equal(population[1], population[2])


def test_unknown_init_is_rejected(tiny_mlp):
    _, baseline = _genome_and_baseline(tiny_mlp)
    with pytest.raises(ValueError, match="unknown population init 'wide'"):
        initial_population("wide", baseline, (baseline, baseline), 4, seed=0)


def _pygad_instance(population, fitness, **options):
    return pygad.GA(
        num_generations=1, num_parents_mating=len(population),
        fitness_func=lambda ga, solution, index: 0.0,
        initial_population=population, gene_type=np.float32, random_seed=5,
        suppress_warnings=True, **options,
    )


def test_pygad_rank_selection_prefers_the_best():
    population = np.arange(8, dtype=np.float32).reshape(4, 2)
    fitness = np.array([0.1, 0.4, 0.2, 0.9])
    ga = _pygad_instance(population, fitness, parent_selection_type="rank")
    counts = np.zeros(4)
    for _ in range(500):
        _, indices = ga.rank_selection(fitness, 4)
        counts += np.bincount(np.asarray(indices, dtype=int), minlength=4)
    assert counts[3] > counts[1] > counts[2] > counts[0]


def test_pygad_two_point_crossover_swaps_one_contiguous_block():
    parents = np.stack([np.zeros(40, np.float32), np.ones(40, np.float32)])
    ga = _pygad_instance(parents, None, crossover_type="two_points")
    lengths = set()
    for _ in range(50):
        offspring = ga.two_points_crossover(parents, (2, 40))
        for child in offspring:
            changes = np.flatnonzero(np.diff(child))
            assert len(changes) <= 2
            lengths.add(int(child.sum()) if child[0] == 0 else int(40 - child.sum()))
    # PyGAD 3.6.0 always swapped exactly half the genes; the block must vary.
    assert len(lengths) > 5


def test_pygad_crossover_probability_zero_copies_parents():
    parents = np.stack([np.zeros(10, np.float32), np.ones(10, np.float32)])
    ga = _pygad_instance(parents, None, crossover_type="two_points", crossover_probability=0.0)
    offspring = ga.two_points_crossover(parents, (4, 10))
    for row, child in enumerate(offspring):
        assert np.array_equal(child, parents[row % 2])
