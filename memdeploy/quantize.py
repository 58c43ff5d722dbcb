"""Weight quantization to the levels a crossbar cell pair holds.

Every function works on one layer's weight tensor and returns normalized levels in
[-1, 1] together with the layer's scale, so that ``levels * scale`` is the quantized
weight. A differential pair stores level ``v`` as ``G+ = g_min + max(v, 0) * range`` and
``G- = g_min + max(-v, 0) * range``.
"""

from __future__ import annotations

import torch

from memdeploy.profiles import WeightSpec

TERNARY_THRESHOLD = 0.7
"""Ternary threshold as a fraction of mean|w| (Li and Liu, Ternary Weight Networks, 2016)."""


def layer_scale(weight: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Return the weight that maps to level 1 (max|w| for uniform levels).

    >>> layer_scale(torch.tensor([0.5, -2.0]), WeightSpec(bits=2)).item()
    2.0
    """
    magnitude = weight.detach().abs()
    if spec.quantization == "ternary":
        threshold = TERNARY_THRESHOLD * magnitude.mean()
        above = magnitude[magnitude > threshold]
        scale = above.mean() if above.numel() else magnitude.max()
    else:
        scale = magnitude.max()
    return torch.clamp(scale, min=torch.finfo(weight.dtype).tiny)


def quantize_levels(weight: torch.Tensor, spec: WeightSpec, scale=None) -> torch.Tensor:
    """Map weights to normalized levels in [-1, 1] for the profile's quantization.

    Uniform quantization with ``bits`` has ``2**bits`` evenly spaced levels from -1 to
    1 (2 bits: -1, -1/3, 1/3, 1). Ternary has -1, 0 and 1.

    >>> w = torch.tensor([-1.0, -0.2, 0.1, 0.9])
    >>> [round(v, 4) for v in quantize_levels(w, WeightSpec(bits=2)).tolist()]
    [-1.0, -0.3333, 0.3333, 1.0]
    """
    scale = layer_scale(weight, spec) if scale is None else scale
    normalized = torch.clamp(weight / scale, -1.0, 1.0)
    if spec.quantization == "none":
        return normalized
    if spec.quantization == "ternary":
        threshold = TERNARY_THRESHOLD * weight.detach().abs().mean() / scale
        return torch.sign(normalized) * (normalized.abs() > threshold)
    steps = 2**spec.bits - 1
    return torch.round((normalized + 1.0) * (steps / 2.0)) * (2.0 / steps) - 1.0


def quantize(weight: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Return the quantized weight tensor (levels times scale); all zeros stay zero."""
    if not bool(weight.detach().abs().max() > 0):
        return torch.zeros_like(weight)
    scale = layer_scale(weight, spec)
    return quantize_levels(weight, spec, scale) * scale


def quantize_ste(weight: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Quantize in the forward pass, pass gradients straight through in the backward.

    The straight-through estimator of Bengio, Léonard and Courville (2013) makes the
    quantizer trainable, which quantization-aware training needs.
    """
    return weight + (quantize(weight, spec) - weight).detach()
