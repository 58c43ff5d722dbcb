"""A small MicroNet for 32x32 images such as CIFAR-100.

MicroNet (Li et al., "MicroNet: Improving Image Recognition with Extremely Low
FLOPs", ICCV 2021) cuts the cost of a mobile network with three parts, all built here:

* Micro-factorized pointwise convolution: a 1x1 group convolution compresses the
  channels, a channel shuffle permutes them and a second 1x1 group convolution
  expands them. With G groups on C/R compressed channels and G close to sqrt(C/R),
  each output channel reaches each input channel through about one path.
* Micro-factorized depthwise convolution: a kxk depthwise convolution becomes a kx1
  and a 1xk depthwise convolution, and the kx1 one may also multiply the channels.
* Dynamic Shift-Max: ``y_i = max_k sum_j a_ij^k(x) * x_((i + j*C/G) mod C)`` with
  coefficients computed from the pooled input, so every channel mixes with the
  channels of other groups that the group convolutions kept apart.

Micro-Block-A (depthwise expansion, then one group convolution that compresses) is
used at high resolution and Micro-Block-C (depthwise, then the full factorized
pointwise convolution, with a residual) after it. The stage widths are chosen for
CIFAR and are not one of the paper's M0-M3 configurations.

Only ``nn.Conv2d`` and ``nn.Linear`` hold weights that a crossbar stores, including
the small Shift-Max coefficient layers; batch normalization stays digital.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from memdeploy.errors import ModelSpecError

logger = logging.getLogger(__name__)

STEM_CHANNELS = (8, 16)
"""Channels after the stem's 3x1 convolution and after its 1x3 group convolution."""
BLOCKS: tuple[tuple[str, int, int, int], ...] = (
    ("A", 24, 1, 2),
    ("A", 32, 2, 2),
    ("C", 32, 1, 3),
    ("C", 64, 2, 3),
    ("C", 64, 1, 3),
    ("C", 96, 1, 3),
    ("C", 128, 2, 3),
    ("C", 128, 1, 3),
)
"""Blocks as (kind, output channels, stride, depthwise channel multiplier)."""
POINTWISE_REDUCTION = 2
"""Compression ratio R of the factorized pointwise convolution in Micro-Block-C."""
HEAD_CHANNELS = 384


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups, as in ShuffleNet."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, c // self.groups, h, w)
        return grouped.transpose(1, 2).reshape(n, c, h, w)


class DynamicShiftMax(nn.Module):
    """Dynamic Shift-Max activation with J=2 channel shifts and K=2 fusions.

    Channel ``i`` of the output is the max over ``k`` of ``a[k, 0] * x[i] +
    a[k, 1] * x[(i + C/G) mod C]``. A squeeze-excitation style hyper-function
    (global average pool, linear, ReLU, linear) maps the input to the coefficients
    ``a = init + 2 * hardsigmoid(z) - 1``, where ``init`` is 1 for ``a[0, 0]`` and 0
    elsewhere. The last hyper-function layer starts at zero, so a new activation
    computes ``max(x, 0)``, a ReLU.

    NOTE: the coefficient range (init +/- 1) and the hidden width (C / reduction)
    are choices of this small version, not values taken from the paper.

    Args:
        channels: Channels C of the input.
        groups: Groups G of the adjacent group convolution; the shift is C/G channels.
        reduction: Ratio of C to the hyper-function's hidden width.
    """

    SHIFTS = 2
    FUSIONS = 2

    def __init__(self, channels: int, groups: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.shift = channels // groups
        self.hyper = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels * self.SHIFTS * self.FUSIONS),
        )
        nn.init.zeros_(self.hyper[-1].weight)
        nn.init.zeros_(self.hyper[-1].bias)
        init = torch.zeros(self.FUSIONS, self.SHIFTS, 1)
        init[0, 0] = 1.0
        self.register_buffer("coefficient_init", init, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        z = self.hyper(x).view(n, self.FUSIONS, self.SHIFTS, c)
        coefficients = self.coefficient_init + 2.0 * nn.functional.hardsigmoid(z) - 1.0

        shifted = torch.stack(
            [torch.roll(x, -j * self.shift, dims=1) for j in range(self.SHIFTS)], dim=1
        )
        fused = torch.einsum("nkjc,njchw->nkchw", coefficients, shifted)
        return fused.max(dim=1).values


def group_count(compressed: int, *channel_counts: int) -> int:
    """Return the common divisor of ``channel_counts`` closest to sqrt(compressed).

    >>> group_count(32, 96, 32, 64), group_count(24, 48, 24)
    (4, 4)
    """
    common = math.gcd(*channel_counts)
    divisors = [d for d in range(1, common + 1) if common % d == 0]
    return min(divisors, key=lambda d: (abs(d - math.sqrt(compressed)), d))


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
) -> nn.Sequential:
    """Return a bias-free convolution padded to keep the size, then batch norm."""
    kernel = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * 2
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    )


class MicroFactorizedDepthwise(nn.Sequential):
    """A kx1 then a 1xk depthwise convolution; the kx1 multiplies the channels."""

    def __init__(self, channels: int, kernel_size: int, stride: int, multiplier: int):
        expanded = channels * multiplier
        super().__init__(
            conv_bn(channels, expanded, (kernel_size, 1), (stride, 1), groups=channels),
            conv_bn(expanded, expanded, (1, kernel_size), (1, stride), groups=expanded),
        )


class MicroFactorizedPointwise(nn.Sequential):
    """Group 1x1 compression, Shift-Max, channel shuffle and group 1x1 expansion."""

    def __init__(self, in_channels: int, compressed: int, out_channels: int):
        groups = group_count(compressed, in_channels, compressed, out_channels)
        super().__init__(
            conv_bn(in_channels, compressed, 1, groups=groups),
            DynamicShiftMax(compressed, groups),
            ChannelShuffle(groups),
            conv_bn(compressed, out_channels, 1, groups=groups),
        )


class MicroBlock(nn.Module):
    """Micro-Block-A (``kind="A"``) or Micro-Block-C (``kind="C"``).

    Both start with a micro-factorized 3x3 depthwise convolution that multiplies
    the channels, followed by dynamic Shift-Max. Block A then compresses with one
    group 1x1 convolution and shuffles the channels. Block C applies the full
    micro-factorized pointwise convolution and adds the input when the shapes match.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        stride: int,
        multiplier: int,
    ):
        super().__init__()
        hidden = in_channels * multiplier
        if kind == "A":
            groups = group_count(out_channels, hidden, out_channels)
            pointwise: nn.Module = nn.Sequential(
                conv_bn(hidden, out_channels, 1, groups=groups), ChannelShuffle(groups)
            )
        else:
            compressed = out_channels // POINTWISE_REDUCTION
            groups = group_count(compressed, hidden, compressed, out_channels)
            pointwise = MicroFactorizedPointwise(hidden, compressed, out_channels)

        self.depthwise = MicroFactorizedDepthwise(in_channels, 3, stride, multiplier)
        self.activation = DynamicShiftMax(hidden, groups)
        self.pointwise = pointwise
        self.use_residual = kind == "C" and stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.pointwise(self.activation(self.depthwise(x)))
        return x + out if self.use_residual else out


class MicroNet(nn.Module):
    """MicroNet with a factorized stem, micro-blocks and a two-layer classifier.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        dropout: Dropout probability before the last linear layer.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        stem_mid, channels = STEM_CHANNELS
        layers: list[nn.Module] = [
            conv_bn(in_channels, stem_mid, (3, 1)),
            conv_bn(stem_mid, channels, (1, 3), groups=stem_mid),
            nn.ReLU6(inplace=True),
        ]
        for kind, out_channels, stride, multiplier in BLOCKS:
            layers.append(MicroBlock(kind, channels, out_channels, stride, multiplier))
            channels = out_channels

        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, HEAD_CHANNELS),
            nn.ReLU6(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(HEAD_CHANNELS, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_micronet(image_shape: Sequence[int], num_classes: int) -> MicroNet:
    """Build the small MicroNet for images of ``image_shape`` (C, H, W).

    Raises:
        ModelSpecError: The shape is not (C, H, W) or there are fewer than 2 classes.
    """
    if len(image_shape) != 3 or any(int(size) < 1 for size in image_shape):
        raise ModelSpecError(
            f"image_shape is {tuple(image_shape)}, expected (channels, height, width) "
            "with positive sizes, such as (3, 32, 32)"
        )
    if num_classes < 2:
        raise ModelSpecError(f"num_classes is {num_classes}, expected at least 2")

    model = MicroNet(int(image_shape[0]), num_classes)
    logger.debug(
        "built MicroNet with %d parameters", sum(p.numel() for p in model.parameters())
    )
    return model
