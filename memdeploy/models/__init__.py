"""Model builders: named architectures and a user's own factory by import path.

Each builder takes the dataset's image shape (C, H, W) and class count. A model whose
output is an embedding for prototypical few-shot classification sets the attribute
``memdeploy_task = "episodic"``; every other model is a classifier returning logits.
"""

from __future__ import annotations

import importlib
import inspect
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
    except Exception as err:
        # Importing runs the module's code, which may fail in any way.
        raise ModelSpecError(
            f"model {spec!r}: importing module {module_name!r} failed with "
            f"{type(err).__name__}: {err}"
        ) from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelSpecError(
            f"model {spec!r}: {module_name} has no callable named {attribute!r}"
        )
    _check_signature(spec, factory)
    return factory


def _check_signature(spec: str, factory: Callable) -> None:
    """Raise unless `factory` can be called as factory(image_shape, num_classes)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # some builtins have no signature; the call itself will tell
    try:
        signature.bind((1, 1, 1), 1)
    except TypeError as err:
        raise ModelSpecError(
            f"model {spec!r}: the factory must accept (image_shape, num_classes), "
            f"but its signature is {signature} ({err})"
        ) from err


def build_model(
    spec: str, image_shape: tuple[int, int, int], num_classes: int, *, seed: int = 0
) -> nn.Module:
    """Build a model by name or `module:factory` path, with seeded initial weights."""
    builder = MODELS.get(spec) or resolve_factory(spec)
    torch.manual_seed(seed)
    try:
        model = builder(tuple(image_shape), num_classes)
    except ModelSpecError:
        raise
    except Exception as err:
        raise ModelSpecError(
            f"model {spec!r}: building it for images of shape {tuple(image_shape)} "
            f"and {num_classes} classes failed with {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model {spec!r}: the factory returned {type(model).__name__}, expected a "
            "torch.nn.Module"
        )
    if not any(True for _ in model.parameters()):
        raise ModelSpecError(
            f"model {spec!r}: the factory returned a {type(model).__name__} without "
            "parameters, so there are no weights to deploy"
        )
    return model
