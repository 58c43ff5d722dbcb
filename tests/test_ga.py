"""The GA engine: noisy-fitness policy, reproducibility and exact resume."""

from __future__ import annotations

import numpy as np
import torch

from memdeploy.evaluation import EvaluationResult
from memdeploy.ga import GASettings, GeneticOptimizer, generation_noise_seed
from memdeploy.genome import Genome


class _NoisyEvaluator:
    """Fitness = -|genes| mean plus noise fixed by the request's noise seed."""

    def __init__(self):
        self.requests = []

    def score(self, genes, noise_seed):
        noise = np.random.default_rng(noise_seed).normal(0, 0.01)
        return float(-np.abs(genes).mean() + noise)

    def evaluate(self, request):
        self.requests.append(request)
        fitness = np.array([self.score(g, request.noise_seed) for g in request.candidates])
        return EvaluationResult(fitness, None, [])

    def close(self):
        pass


def _optimizer(evaluator, seed=0, generations=4, on_generation=None, **settings):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    genome = Genome(model)
    options = dict(population=6, generations=generations, init="large") | settings
    return GeneticOptimizer(
        evaluator, genome, genome.vector(model), GASettings(**options), seed,
        on_generation=on_generation,
    )


def test_every_member_is_scored_each_generation():
    evaluator = _NoisyEvaluator()
    _optimizer(evaluator).run()
    assert len(evaluator.requests) == 5
    assert all(len(request.candidates) == 6 for request in evaluator.requests)


def test_generation_shares_one_noise_seed():
    evaluator = _NoisyEvaluator()
    _optimizer(evaluator, seed=3).run()
    seeds = [request.noise_seed for request in evaluator.requests]
    assert seeds == [generation_noise_seed(3, g) for g in range(5)]
    assert len(set(seeds)) == 5


def test_elite_is_rescored_under_the_new_draw():
    records = []
    evaluator = _NoisyEvaluator()
    _optimizer(evaluator, elitism=1, on_generation=lambda r, s: records.append(r)).run()
    for previous, current in zip(records, records[1:]):
        elite = previous.best_genes
        request = evaluator.requests[current.generation]
        rows = [i for i, g in enumerate(request.candidates) if np.array_equal(g, elite)]
        assert rows, "the elite was not carried into the next generation"
        fresh = evaluator.score(elite, request.noise_seed)
        assert current.fitness[rows[0]] == fresh
        assert fresh != evaluator.score(elite, evaluator.requests[previous.generation].noise_seed)


def test_same_seed_gives_same_population():
    first = _optimizer(_NoisyEvaluator(), seed=11).run()
    second = _optimizer(_NoisyEvaluator(), seed=11).run()
    assert np.array_equal(first.population, second.population)


def test_different_seeds_give_different_populations():
    first = _optimizer(_NoisyEvaluator(), seed=11).run()
    second = _optimizer(_NoisyEvaluator(), seed=12).run()
    assert not np.array_equal(first.population, second.population)


def test_resume_from_any_generation_matches_uninterrupted_run():
    states = []
    full = _optimizer(_NoisyEvaluator(), seed=5, generations=6,
                      on_generation=lambda r, s: states.append(
                          (s.generation, s.population.copy(), s.fitness.copy(),
                           s.numpy_state, s.python_state))).run()
    for generation in (0, 2, 5):
        from memdeploy.ga import GAState

        g, population, fitness, numpy_state, python_state = states[generation]
        state = GAState(g, population, fitness, numpy_state, python_state, [], [])
        resumed = _optimizer(_NoisyEvaluator(), seed=5, generations=6).run(resume=state)
        assert np.array_equal(resumed.population, full.population)
        assert np.array_equal(resumed.last_generation_fitness, full.last_generation_fitness)


def test_written_back_genes_replace_the_population():
    class _Tuner(_NoisyEvaluator):
        def evaluate(self, request):
            result = super().evaluate(request)
            result.candidates = request.candidates * 0.5
            return result

    evaluator = _Tuner()
    ga = _optimizer(evaluator, generations=0).run()
    assert np.allclose(ga.population, evaluator.requests[0].candidates * 0.5)
