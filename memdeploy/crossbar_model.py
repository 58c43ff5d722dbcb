"""A model whose crossbar layers run on a backend.

`CrossbarModel` holds a copy of the model in which every `nn.Linear` and `nn.Conv2d`
forwards its input to the backend's programmed layer and adds its bias digitally.
Parameter names and order stay those of the original model, so a gene vector loads
into the copy unchanged.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from backends import CrossbarBackend, ProgrammingStats
from memdeploy.genome import Genome

logger = logging.getLogger(__name__)


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
        self.channels_last = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.backend.forward(self.layer_name, inputs)
        if self.kind == "linear":
            return outputs if self.bias is None else outputs + self.bias
        if self.channels_last and not outputs.is_contiguous(
            memory_format=torch.channels_last
        ):
            # A one-channel input leaves the convolution in the default layout;
            # the bias addition writes the channels-last copy the next layers need.
            result = torch.empty_like(outputs, memory_format=torch.channels_last)
            bias = 0.0 if self.bias is None else self.bias.view(1, -1, 1, 1)
            return torch.add(outputs, bias, out=result)
        if self.bias is None:
            return outputs
        return outputs + self.bias.view(1, -1, 1, 1)


class CrossbarModel:
    """Run a model with its crossbar layers on `backend`.

    Args:
        model: The model to deploy; it is copied, not changed.
        backend: The backend; `setup` is called here with the model's crossbar layers.
        channels_last: Pass image batches to the model in the channels-last memory
            layout, in which CPU convolutions run several times faster than in the
            default layout. The values, and so the results, are the same.
    """

    def __init__(
        self, model: nn.Module, backend: CrossbarBackend, *, channels_last: bool = False
    ) -> None:
        self.genome = Genome(model)
        self.backend = backend
        self.module = copy.deepcopy(model).eval()
        for layer in self.genome.crossbar_layers:
            original = self.module.get_submodule(layer.name)
            programmed = _ProgrammedLayer(layer.name, original, backend)
            _replace_submodule(self.module, layer.name, programmed)
        self._set_channels_last(channels_last)
        backend.setup(self.genome.crossbar_layers)

    def _set_channels_last(self, enabled: bool) -> None:
        self.channels_last = enabled
        for module in self.module.modules():
            if isinstance(module, _ProgrammedLayer):
                module.channels_last = enabled

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
        if self.channels_last and inputs.dim() == 4:
            try:
                return self.module(inputs.contiguous(memory_format=torch.channels_last))
            except RuntimeError as err:
                # A model that calls .view() on a convolution's output needs the
                # default layout; such a model keeps running, only slower.
                if "Use .reshape" not in str(err):
                    raise
                logger.warning("model needs the default memory layout: %s", err)
                self._set_channels_last(False)
        return self.module(inputs)


def _replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
