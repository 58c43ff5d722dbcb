"""The chromosome: every trainable parameter of a model as one flat float32 vector.

Genes are laid out in `named_parameters` order, as `torch.nn.utils.parameters_to_vector`
does. The weights of `nn.Linear` and `nn.Conv2d` layers go onto the crossbar; biases
and normalization parameters stay in the digital periphery but evolve too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backends import CrossbarLayer
from memdeploy.errors import WeightsError


@dataclass(frozen=True)
class GeneBlock:
    """The genes of one parameter tensor."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]
    crossbar_layer: str | None
    """Name of the crossbar layer this tensor is the weight of, else None."""


class Genome:
    """Maps between a model's parameters and a flat gene vector."""

    def __init__(self, model: nn.Module) -> None:
        crossbar_weights = {}
        self.crossbar_layers: list[CrossbarLayer] = []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                self.crossbar_layers.append(CrossbarLayer.from_module(name, module))
                crossbar_weights[f"{name}.weight" if name else "weight"] = name

        self.blocks: list[GeneBlock] = []
        offset = 0
        for name, parameter in model.named_parameters():
            size = parameter.numel()
            self.blocks.append(
                GeneBlock(
                    name, offset, offset + size, tuple(parameter.shape),
                    crossbar_weights.get(name),
                )
            )
            offset += size
        self.size = offset

    def vector(self, model: nn.Module) -> np.ndarray:
        """Return the model's parameters as a float32 gene vector (a copy)."""
        flat = nn.utils.parameters_to_vector(model.parameters())
        return flat.detach().to(torch.float32).numpy().copy()

    def load(self, model: nn.Module, genes: np.ndarray | torch.Tensor) -> None:
        """Copy a gene vector into the model's parameters."""
        tensor = torch.as_tensor(self.check(genes))
        with torch.no_grad():
            nn.utils.vector_to_parameters(tensor, model.parameters())

    def check(self, genes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Reject a vector of the wrong length or with NaN or infinite genes."""
        if genes.shape[-1] != self.size:
            raise WeightsError(
                f"gene vector has {genes.shape[-1]} genes, the model has {self.size} "
                "parameters: the weights belong to another model"
            )
        finite = np.isfinite(genes).all() if isinstance(genes, np.ndarray) else bool(
            torch.isfinite(genes).all()
        )
        if not finite:
            raise WeightsError("gene vector contains NaN or infinite values")
        return genes

    def crossbar_weights(self, genes: np.ndarray) -> dict[str, torch.Tensor]:
        """Return each crossbar layer's weight tensor, viewing the gene vector."""
        tensor = torch.from_numpy(np.ascontiguousarray(genes, dtype=np.float32))
        return {
            block.crossbar_layer: tensor[block.start : block.stop].view(block.shape)
            for block in self.blocks
            if block.crossbar_layer is not None
        }

    def block_index(self) -> np.ndarray:
        """Return, for every gene, the index of the parameter tensor it belongs to."""
        index = np.empty(self.size, dtype=np.int32)
        for number, block in enumerate(self.blocks):
            index[block.start : block.stop] = number
        return index

    def per_block(self, values: np.ndarray, reduce) -> np.ndarray:
        """Apply `reduce` (e.g. np.max) to each block of `values`, one result per block."""
        return np.array([reduce(values[b.start : b.stop]) for b in self.blocks])
