"""LocalEvaluator: stacked scoring against a plain per-candidate reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from backends import open_backend
from memdeploy.crossbar_model import CrossbarModel, fold_for_finetuning
from memdeploy.datasets import load_dataset
from memdeploy.evaluation import (
    EvaluationRequest,
    FitnessSettings,
    LocalEvaluator,
    draw_noise_seeds,
)
from memdeploy.models import build_model, task_kind
from memdeploy.profiles import profile_from_dict
from memdeploy.tasks import make_task
from memdeploy.training import train

PROFILE = profile_from_dict(
    {
        "schema_version": 1,
        "name": "test",
        "weights": {"bits": 2, "programming_noise": 0.05},
    }
)
NOISE_SEED = 1234


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _workload(digits, model_name: str):
    model = build_model(
        model_name, digits.image_shape, digits.num_classes, seed=0
    ).eval()
    kind = task_kind(model)
    options = {"eval_episodes": {"validation": 3}} if kind == "episodic" else {}
    return model, make_task(kind, digits, seed=0, **options)


def _population(model, size: int = 3) -> np.ndarray:
    genes = CrossbarModel(model, open_backend("gaussian", PROFILE)).genome.vector(model)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.05, (size, genes.size)).astype(np.float32)
    return genes + noise * np.abs(genes).max()


def _evaluator(model, task, **settings) -> LocalEvaluator:
    backend = open_backend("gaussian", PROFILE, seed=0)
    return LocalEvaluator(model, task, backend, PROFILE, FitnessSettings(**settings))


def _request(population: np.ndarray) -> EvaluationRequest:
    ids = tuple(range(len(population)))
    return EvaluationRequest(
        population, generation=2, noise_seed=NOISE_SEED, candidate_ids=ids
    )


def _plain_fitness(model, task, population: np.ndarray) -> list[float]:
    """Program and score candidate by candidate, default memory layout."""
    crossbar = CrossbarModel(model, open_backend("gaussian", PROFILE, seed=0))
    scores = []
    for genes in population:
        crossbar.program(genes, noise_seed=NOISE_SEED)
        scores.append(task.accuracy(crossbar, "validation"))
    return scores


@pytest.mark.parametrize("model_name", ["mlp", "protonet"])
def test_stacked_fitness_equals_plain_per_candidate(digits, model_name):
    model, task = _workload(digits, model_name)
    population = _population(model)
    result = _evaluator(model, task).evaluate(_request(population))
    # Exact: the fused digital steps differ from the plain model by float rounding
    # only, which moves no prediction here.
    assert result.fitness.tolist() == _plain_fitness(model, task, population)


@pytest.mark.parametrize("model_name", ["mlp", "protonet"])
def test_stacked_fitness_equals_sequential_scorer(digits, model_name):
    model, task = _workload(digits, model_name)
    population = _population(model)
    evaluator = _evaluator(model, task, finetune_steps=1)
    stacked = evaluator.evaluate(_request(population))
    evaluator.scorer.stacked = False
    sequential = evaluator.evaluate(_request(population))
    assert np.array_equal(stacked.fitness, sequential.fitness)
    assert np.array_equal(stacked.candidates, sequential.candidates)


def _with_running_statistics(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def test_fused_digital_steps_match_unfused_model(digits):
    model = _with_running_statistics(_workload(digits, "protonet")[0])
    genes = _population(model, 1)[0]
    images = digits.validation.images[:32]
    outputs = []
    for fuse_digital in (False, True):
        backend = open_backend("gaussian", PROFILE, seed=0)
        crossbar = CrossbarModel(model, backend, fuse_digital=fuse_digital)
        crossbar.program(genes, noise_seed=NOISE_SEED)
        outputs.append(crossbar(images))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_fused_model_keeps_parameter_and_state_layout(digits):
    model, _ = _workload(digits, "protonet")
    backend = open_backend("gaussian", PROFILE, seed=0)
    plain = CrossbarModel(model, backend).module
    fused = CrossbarModel(model, backend, fuse_digital=True).module
    assert [n for n, _ in fused.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]
    assert list(fused.state_dict()) == list(plain.state_dict())


def test_result_shapes_without_finetuning(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 3)
    result = _evaluator(model, task).evaluate(_request(population))
    assert result.fitness.shape == (3,)
    assert result.candidates is None
    assert len(result.stats) == 3
    assert set(result.seconds) == {"finetune", "program", "inference"}
    assert result.seconds["finetune"] == 0.0


def test_write_back_returns_finetuned_genes(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 3)
    original = population.copy()
    evaluator = _evaluator(model, task, finetune_steps=2)
    result = evaluator.evaluate(_request(population))
    assert result.candidates.shape == population.shape
    assert not np.array_equal(result.candidates, population)
    assert np.array_equal(
        result.candidates[1], evaluator.finetune(population[1], (2, 1))
    )
    assert np.array_equal(population, original)


def test_without_write_back_finetuned_genes_are_scored(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 3)
    without = _evaluator(model, task, finetune_steps=2, write_back=False)
    with_write_back = _evaluator(model, task, finetune_steps=2, write_back=True)
    result = without.evaluate(_request(population))
    expected = with_write_back.evaluate(_request(population)).fitness
    assert result.candidates is None
    assert np.array_equal(result.fitness, expected)


def test_stack_groups_give_the_same_fitness(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 5)
    whole = _evaluator(model, task).evaluate(_request(population))
    grouped_evaluator = _evaluator(model, task)
    grouped_evaluator.scorer.group_size = 2
    grouped = grouped_evaluator.evaluate(_request(population))
    assert np.array_equal(whole.fitness, grouped.fitness)
    assert len(grouped.stats) == 5


def test_empty_request_gives_empty_result(digits):
    model, task = _workload(digits, "mlp")
    empty = np.empty((0, _population(model, 1).shape[1]), dtype=np.float32)
    result = _evaluator(model, task).evaluate(_request(empty))
    assert result.fitness.shape == (0,)
    assert result.stats == []


def test_fitness_averages_shared_noise_draws(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 3)
    result = _evaluator(model, task, noise_draws=3).evaluate(_request(population))
    seeds = draw_noise_seeds(NOISE_SEED, 3)
    assert seeds[0] == NOISE_SEED
    assert len(set(seeds)) == 3
    crossbar = CrossbarModel(model, open_backend("gaussian", PROFILE, seed=0))
    expected = []
    for genes in population:
        draws = []
        for seed in seeds:
            crossbar.program(genes, noise_seed=seed)
            draws.append(task.accuracy(crossbar, "validation"))
        expected.append(np.mean(draws))
    np.testing.assert_allclose(result.fitness, expected, rtol=0, atol=1e-12)
    single = _evaluator(model, task).evaluate(_request(population))
    assert not np.array_equal(result.fitness, single.fitness)
    assert [s.cells_written for s in result.stats] == [
        3 * s.cells_written for s in single.stats
    ]


def test_fitness_split_selects_the_scored_images(digits):
    model, task = _workload(digits, "mlp")
    population = _population(model, 2)
    result = _evaluator(model, task, split="train").evaluate(_request(population))
    crossbar = CrossbarModel(model, open_backend("gaussian", PROFILE, seed=0))
    expected = []
    for genes in population:
        crossbar.program(genes, noise_seed=NOISE_SEED)
        expected.append(task.accuracy(crossbar, "train"))
    assert result.fitness.tolist() == expected
    assert expected != _plain_fitness(model, task, population)


def test_folded_model_matches_original(digits):
    model = _with_running_statistics(_workload(digits, "protonet")[0])
    folded = fold_for_finetuning(model)
    assert [n for n, _ in folded.named_parameters()] == [
        n for n, _ in model.named_parameters()
    ]
    assert list(folded.state_dict()) == list(model.state_dict())
    images = digits.validation.images[:16]
    expected, got = model(images), folded(images)
    assert torch.allclose(expected, got, rtol=1e-4, atol=1e-5)
    expected.square().sum().backward()
    got.square().sum().backward()
    for (name, original), (_, twin) in zip(
        model.named_parameters(), folded.named_parameters()
    ):
        scale = original.grad.abs().max()
        assert torch.allclose(original.grad, twin.grad, atol=1e-4 * scale), name


def test_folded_finetuning_matches_plain(digits):
    model, task = _workload(digits, "protonet")
    model = _with_running_statistics(model)
    genes = _population(model, 1)[0]
    evaluator = _evaluator(model, task, finetune_steps=1)
    folded_genes = evaluator.finetune(genes, (0, 0))
    plain = copy.deepcopy(model)
    evaluator.genome.load(plain, genes.copy())
    lr = evaluator.settings.finetune_lr
    train(plain, task, steps=1, lr=lr,
          seed=int(np.random.SeedSequence([0, 0, 0]).generate_state(1)[0]),
          profile=PROFILE, batch_norm_updates=False)
    plain_genes = evaluator.genome.vector(plain)
    assert not np.array_equal(plain_genes, genes)
    # Adam's first step moves each gene by about lr times the sign of its gradient,
    # so a gradient that rounding takes across zero moves its gene by up to 2 lr.
    difference = np.abs(folded_genes - plain_genes)
    assert difference.max() <= 2.01 * lr
    assert (difference > 1e-6).mean() < 0.01


def test_training_keeps_weights_contiguous(digits):
    model, task = _workload(digits, "protonet")
    train(model, task, steps=1, lr=1e-3, seed=0, profile=PROFILE)
    assert all(p.is_contiguous() for p in model.parameters())
    folded = fold_for_finetuning(model)
    train(folded, task, steps=1, lr=1e-3, seed=0, profile=PROFILE,
          batch_norm_updates=False)
    assert all(p.is_contiguous() for p in folded.parameters())
