"""Model builders: named architectures and a user's own factory by import path.

Each builder takes the dataset's image shape (C, H, W) and class count. A model whose
output is an embedding for prototypical few-shot classification sets the attribute
``memdeploy_task = "episodic"``; every other model is a classifier returning logits.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from memdeploy.errors import ModelSpecError
from memdeploy.models.mlp import build_mlp
from memdeploy.models.protonet import build_protonet

ModelBuilder = Callable[[tuple[int, int, int], int], nn.Module]


def _lazy(module_name: str, function_name: str) -> ModelBuilder:
    def build(image_shape, num_classes):
        module = importlib.import_module(module_name)
        return getattr(module, function_name)(image_shape, num_classes)

    return build


MODELS: dict[str, ModelBuilder] = {
    "mlp": build_mlp,
    "protonet": build_protonet,
    "mobilenetv2": _lazy("memdeploy.models.mobilenetv2", "build_mobilenetv2"),
    "micronet": _lazy("memdeploy.models.micronet", "build_micronet"),
}


def task_kind(model: nn.Module) -> str:
    """Return "episodic" for prototypical embedding models, else "classification"."""
    return getattr(model, "memdeploy_task", "classification")


def resolve_factory(spec: str) -> ModelBuilder:
    """Import `package.module:factory`, a callable taking (image_shape, num_classes)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelSpecError(
            f"model {spec!r} is neither a known model ({', '.join(MODELS)}) nor a "
            "'package.module:factory' path"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSpecError(
            f"model {spec!r}: module {module_name!r} cannot be imported ({err}); check "
            "that it is on PYTHONPATH"
        ) from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelSpecError(
            f"model {spec!r}: {module_name} has no callable named {attribute!r}"
        )
    return factory


def build_model(
    spec: str, image_shape: tuple[int, int, int], num_classes: int, *, seed: int = 0
) -> nn.Module:
    """Build a model by name or `module:factory` path, with seeded initial weights."""
    builder = MODELS.get(spec) or resolve_factory(spec)
    torch.manual_seed(seed)
    try:
        model = builder(tuple(image_shape), num_classes)
    except TypeError as err:
        raise ModelSpecError(
            f"model {spec!r}: the factory must accept (image_shape, num_classes): {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model {spec!r}: the factory returned {type(model).__name__}, expected a "
            "torch.nn.Module"
        )
    return model
