"""Gradient training: the float model, and quantization-aware training with noise.

Noise-aware training runs each crossbar layer with its weight quantized to the
profile's levels (straight-through gradients) plus fresh Gaussian noise of the
profile's programming and read noise, p x max|w| of the layer, at every step. It
yields the quantized baseline and is the fine-tuning inside the GA's fitness.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from memdeploy.genome import Genome
from memdeploy.profiles import DeviceProfile
from memdeploy.quantize import layer_scale, quantize_ste

logger = logging.getLogger(__name__)


def noise_aware_forward(
    model: nn.Module,
    genome: Genome,
    profile: DeviceProfile | None,
    generator: torch.Generator,
    noise_scale: float = 1.0,
):
    """Return a forward function with quantized, noisy crossbar weights.

    With `profile` None the model runs in float, unchanged.
    """
    if profile is None:
        return model

    spec = profile.weights
    sigma = noise_scale * math.hypot(spec.programming_noise, spec.read_noise)
    weight_names = [b.name for b in genome.blocks if b.crossbar_layer is not None]

    def forward(images: torch.Tensor) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        for name in weight_names:
            weight = parameters[name]
            noisy = quantize_ste(weight, spec)
            if sigma > 0:
                noise = torch.randn(weight.shape, generator=generator)
                noisy = noisy + noise * (sigma * layer_scale(weight, spec).detach())
            parameters[name] = _conv_layout(noisy)
        return functional_call(model, parameters, (images,))

    return forward


def _conv_layout(weight: torch.Tensor) -> torch.Tensor:
    """Return a convolution weight in channels-last layout, other tensors as they are.

    A convolution picks its layout from its input and weight. In channels-last, the
    max pooling after it ran 9 times faster on the two-core CPU of docs/benchmarks.md
    ("Fine-tuning speed"), which also gives the whole step's measurements. A noisy
    weight (a sum of two tensors) would otherwise fall back to the contiguous layout.
    """
    if weight.dim() != 4:
        return weight
    return weight.contiguous(memory_format=torch.channels_last)


def train(
    model: nn.Module,
    task,
    *,
    steps: int,
    lr: float,
    seed: int,
    profile: DeviceProfile | None = None,
    batch_norm_updates: bool = True,
    log_every: int = 0,
) -> list[float]:
    """Train `model` in place with Adam for `steps` minibatches or episodes.

    Args:
        profile: When given, train noise-aware against this profile's quantization
            and noise; when None, train in float.
        batch_norm_updates: Whether batch-norm layers use batch statistics and update
            their running estimates. Off for fine-tuning candidates, whose running
            estimates are shared buffers outside the gene vector.
    """
    genome = Genome(model)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    forward = noise_aware_forward(model, genome, profile, generator)
    # Convolution weights train in channels-last layout and go back to the contiguous
    # layout at the end, which the gene vector's views of the parameters need.
    model.to(memory_format=torch.channels_last)
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train(batch_norm_updates)
        losses = []
        for step in range(steps):
            loss = task.loss(forward, task.sample_batch(rng))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                recent = np.mean(losses[-log_every:])
                logger.info("training step %d/%d, loss %.4f", step + 1, steps, recent)
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.eval()
    return losses
