"""Multilayer perceptron, the model of the embedded default (8x8 digits)."""

from __future__ import annotations

from torch import nn


def build_mlp(
    image_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...] = (64,)
) -> nn.Module:
    """Flatten the image, then Linear-ReLU blocks and a Linear classifier."""
    channels, height, width = image_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width_in = channels * height * width
    for width_out in hidden:
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        width_in = width_out
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)
