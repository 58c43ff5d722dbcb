"""A model whose crossbar layers run on a backend.

`CrossbarModel` holds a copy of the model in which every `nn.Linear` and `nn.Conv2d`
forwards its input to the backend's programmed layer and adds its bias digitally.
Parameter names and order stay those of the original model, so a gene vector loads
into the copy unchanged.

With `fuse_digital`, the digital steps that directly follow a crossbar layer in an
`nn.Sequential` (its bias, an eval-mode batch normalization, a ReLU) run as one
in-place step on the backend's output. Eval-mode batch normalization is the affine
map ``x * scale + shift``, so bias and normalization fold into one multiply-add. The
results equal the unfused model's up to float rounding.

`fold_for_finetuning` does the same for gradient steps through a model whose batch
normalizations stay in eval mode, as the fine-tuning inside the fitness does.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from backends import CrossbarBackend, ProgrammingStats
from memdeploy.genome import Genome


class _ProgrammedLayer(nn.Module):
    """Stand-in for a Linear or Conv2d layer; its weight lives on the crossbar."""

    def __init__(self, name: str, original: nn.Module, backend: CrossbarBackend):
        super().__init__()
        # Registered in the original order (weight, then bias) to keep gene layout.
        self.weight = original.weight
        self.bias = original.bias
        self.layer_name = name
        self.kind = "linear" if isinstance(original, nn.Linear) else "conv2d"
        self.backend = backend
        self.epilogue: _Epilogue | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.backend.forward(self.layer_name, inputs)
        if self.epilogue is not None:
            return self.epilogue.apply(outputs, self.bias)
        if self.bias is None:
            return outputs
        if self.kind == "conv2d":
            return outputs + self.bias.view(1, -1, 1, 1)
        return outputs + self.bias


class FoldedNorm(nn.Module):
    """A batch normalization whose work the preceding layer does.

    It keeps the original's parameters and buffers under the same names, so gene
    vectors and state dictionaries load as before, and passes its input through.
    """

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        self.register_buffer("num_batches_tracked", norm.num_batches_tracked)
        self.eps = norm.eps

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    def affine(self, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scale, shift) of the normalization applied to outputs + bias."""
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean if bias is None else bias - self.running_mean
        shift = shift * scale
        return scale, shift if self.bias is None else shift + self.bias


class _Epilogue:
    """Bias, batch normalization and ReLU after a crossbar layer, done in place."""

    def __init__(self, norm: FoldedNorm | None, relu: bool) -> None:
        self.norm = norm
        self.relu = relu

    def apply(self, outputs: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = (1, -1) + (1,) * (outputs.dim() - 2)
        bias = None if bias is None else bias.detach()
        if self.norm is not None:
            scale, shift = (value.detach() for value in self.norm.affine(bias))
            torch.addcmul(shift.view(shape), outputs, scale.view(shape), out=outputs)
        elif bias is not None:
            outputs.add_(bias.view(shape))
        return outputs.clamp_(min=0.0) if self.relu else outputs


class CrossbarModel:
    """Run a model with its crossbar layers on `backend`.

    Args:
        model: The model to deploy; it is copied, not changed.
        backend: The backend; `setup` is called here with the model's crossbar layers.
        fuse_digital: Run bias, batch normalization and ReLU that follow a crossbar
            layer in an `nn.Sequential` as one in-place step. The backend's
            `forward` must return a new tensor, as the simulators' does.
    """

    def __init__(
        self, model: nn.Module, backend: CrossbarBackend, *, fuse_digital: bool = False
    ) -> None:
        self.genome = Genome(model)
        self.backend = backend
        self.module = copy.deepcopy(model).eval()
        for layer in self.genome.crossbar_layers:
            original = self.module.get_submodule(layer.name)
            _replace_submodule(
                self.module, layer.name, _ProgrammedLayer(layer.name, original, backend)
            )
        if fuse_digital:
            _fuse_epilogues(self.module)
        backend.setup(self.genome.crossbar_layers)

    def program(self, genes: np.ndarray, *, noise_seed: int | None = None) -> ProgrammingStats:
        """Load digital parameters from `genes` and program the crossbar weights."""
        self.genome.load(self.module, genes)
        return self.backend.program(self.genome.crossbar_weights(genes), noise_seed=noise_seed)

    def program_stack(
        self, candidates: np.ndarray, *, noise_seed: int
    ) -> list[ProgrammingStats]:
        """Program every row of `candidates` at once; `select` then picks one.

        The backend must offer `program_stack` and `select_stacked`, as the
        simulators do (see `memdeploy.batched.StackedProgramming`).
        """
        self.genome.check(candidates)
        return self.backend.program_stack(
            self.stacked_weights(candidates), noise_seed=noise_seed
        )

    def select(self, index: int, genes: np.ndarray) -> None:
        """Run candidate `index` of the last `program_stack`, whose genes are `genes`."""
        self.genome.load(self.module, genes)
        self.backend.select_stacked(index)

    def stacked_weights(self, candidates: np.ndarray) -> dict[str, torch.Tensor]:
        """Return each crossbar layer's weights of all candidates, (n, *shape) views."""
        tensor = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))
        return {
            block.crossbar_layer: tensor[:, block.start : block.stop].view(
                len(tensor), *block.shape
            )
            for block in self.genome.blocks
            if block.crossbar_layer is not None
        }

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs)


def _fuse_epilogues(root: nn.Module) -> None:
    """Hand each crossbar layer the batch normalization and ReLU that follow it."""
    for sequential in [m for m in root.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for position, name in enumerate(names):
            layer = sequential._modules[name]
            if not isinstance(layer, _ProgrammedLayer):
                continue
            following = names[position + 1 : position + 3]
            norm = None
            if following and foldable_norm(sequential._modules[following[0]]):
                norm = FoldedNorm(sequential._modules[following[0]])
                sequential._modules[following.pop(0)] = norm
            relu = bool(following) and type(sequential._modules[following[0]]) is nn.ReLU
            if relu:
                sequential._modules[following[0]] = nn.Identity()
            if norm is not None or relu:
                layer.epilogue = _Epilogue(norm, relu)


class _NormFoldedConv2d(nn.Conv2d):
    """A convolution that applies the eval-mode batch normalization after it.

    The normalization's scale multiplies the weight and its shift becomes the bias,
    so no pass over the activations normalizes them. Gradients reach the original
    weight, bias and normalization parameters. The weight may be a substitute
    passed in by `torch.func.functional_call` (a noisy, quantized copy).
    """

    norm_fold: _NormLink

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        scale, shift = self.norm_fold.norm.affine(self.bias)
        weight = (self.weight * scale.view(-1, 1, 1, 1)).contiguous(
            memory_format=torch.channels_last
        )
        return self._conv_forward(inputs, weight, shift)


class _NormLink:
    """Holds the folded normalization outside the module tree, so its parameters
    keep their names and order."""

    def __init__(self, norm: FoldedNorm) -> None:
        self.norm = norm


def fold_for_finetuning(model: nn.Module) -> nn.Module:
    """Return a copy of `model` that trains faster with batch norms in eval mode.

    In every `nn.Sequential`, a convolution followed by a batch normalization
    absorbs it (see `_NormFoldedConv2d`), and a ReLU followed by max pooling swaps
    places with it: ReLU commutes with the maximum, and it then touches a quarter
    of the values. Parameter names and order stay those of `model`, so gene vectors
    load unchanged. In eval mode, outputs and gradients equal the original's up to
    float rounding. Train the copy only with batch-norm updates off.
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for position, name in enumerate(names[:-1]):
            layer = sequential._modules[name]
            following = sequential._modules[names[position + 1]]
            if type(layer) is nn.Conv2d and foldable_norm(following):
                norm = FoldedNorm(following)
                sequential._modules[names[position + 1]] = norm
                # A class swap keeps the module's parameters, hooks and settings.
                # No other code refers to this copy, so changing its class is safe.
                layer.__class__ = _NormFoldedConv2d
                layer.norm_fold = _NormLink(norm)
        for position, name in enumerate(names[:-1]):
            first = sequential._modules[name]
            second = sequential._modules[names[position + 1]]
            if type(first) is nn.ReLU and type(second) is nn.MaxPool2d:
                sequential._modules[name] = second
                sequential._modules[names[position + 1]] = first
    return folded


def foldable_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
        and module.running_mean is not None
        and module.running_var is not None
    )


def _replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
