"""Prototypical network with the four-block convolutional embedding of Snell et al.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017:
each block is a 3x3 convolution with 64 filters, batch normalization, ReLU and 2x2
max pooling. A 28x28 image becomes a 64-value embedding. Classes are scored by the
negative squared distance of a query's embedding to each class prototype, the mean
embedding of the class's support examples.
"""

from __future__ import annotations

import torch
from torch import nn


class ProtoNet(nn.Module):
    """Four-block convolutional embedding network."""

    memdeploy_task = "episodic"

    def __init__(self, in_channels: int, image_size: int, hidden: int = 64) -> None:
        super().__init__()
        blocks = []
        size = image_size
        channels = in_channels
        for _ in range(4):
            # Pool only while the feature map has room, so small inputs (8x8 digits)
            # keep all four blocks.
            pool = nn.MaxPool2d(2) if size >= 2 else nn.Identity()
            size = size // 2 if size >= 2 else size
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, hidden, 3, padding=1),
                    nn.BatchNorm2d(hidden),
                    nn.ReLU(),
                    pool,
                )
            )
            channels = hidden
        self.encoder = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images).flatten(1)


def build_protonet(image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the embedding network; `num_classes` is unused (prototypes are data)."""
    del num_classes
    channels, height, width = image_shape
    return ProtoNet(channels, min(height, width))


def prototype_logits(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int
) -> torch.Tensor:
    """Return negative squared distances of query embeddings to class prototypes.

    Labels must be 0..ways-1 within the episode.
    """
    prototypes = torch.zeros(ways, support.shape[1], dtype=support.dtype)
    prototypes.index_add_(0, support_labels, support)
    counts = torch.bincount(support_labels, minlength=ways).clamp(min=1)
    prototypes = prototypes / counts.unsqueeze(1).to(support.dtype)
    return -torch.cdist(query, prototypes).pow(2)
