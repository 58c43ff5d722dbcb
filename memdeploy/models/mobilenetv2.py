"""MobileNetV2 for 32x32 images such as CIFAR-10 and CIFAR-100.

The network follows Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (CVPR 2018), Table 2: a 3x3 stem convolution with 32 channels, seven
stages of inverted residual blocks, a 1x1 convolution to 1280 channels, global
average pooling and a linear classifier. For 32x32 inputs the stem has stride 1
instead of 2, so the last feature map is 2x2 instead of 1x1.

Only ``nn.Conv2d`` and ``nn.Linear`` hold weights that a crossbar stores; batch
normalization and the activations stay digital.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from memdeploy.errors import ModelSpecError

logger = logging.getLogger(__name__)

INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""Stages as (expansion t, output channels c, blocks n, first stride s), Table 2."""
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
CHANNEL_DIVISOR = 8
"""Channel counts are rounded to multiples of this after applying the width."""


def make_divisible(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round ``channels`` to the nearest multiple of ``divisor``, losing at most 10%.

    >>> make_divisible(32 * 0.35), make_divisible(24 * 0.5), make_divisible(3.0)
    (16, 16, 8)
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def conv_bn_relu6(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
) -> nn.Sequential:
    """Return convolution, batch normalization and ReLU6, padded to keep the size."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand with a 1x1 convolution, filter depthwise 3x3, project linearly with 1x1.

    The block adds its input to the output when the stride is 1 and the channel
    counts match. The projection has no activation (the linear bottleneck).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int
    ):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            conv_bn_relu6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with a stride-1 stem for small images.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        width: Width multiplier applied to every layer; the last 1x1 convolution
            keeps 1280 channels for widths below 1, as in the paper.
        dropout: Dropout probability before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        dropout: float = 0.2,
    ):
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, channels, 3, stride=1)]

        for expansion, out_channels, blocks, first_stride in INVERTED_RESIDUAL_SETTINGS:
            out_channels = make_divisible(out_channels * width)
            for index in range(blocks):
                stride = first_stride if index == 0 else 1
                layers.append(
                    InvertedResidual(channels, out_channels, stride, expansion)
                )
                channels = out_channels

        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width))
        layers.append(conv_bn_relu6(channels, last_channels, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(last_channels, num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def check_image_shape(image_shape: Sequence[int], num_classes: int) -> None:
    """Raise ModelSpecError unless ``image_shape`` is (C, H, W) and classes >= 2."""
    if len(image_shape) != 3 or any(int(size) < 1 for size in image_shape):
        raise ModelSpecError(
            f"image_shape is {tuple(image_shape)}, expected (channels, height, width) "
            "with positive sizes, such as (3, 32, 32)"
        )
    if num_classes < 2:
        raise ModelSpecError(f"num_classes is {num_classes}, expected at least 2")


def build_mobilenetv2(
    image_shape: Sequence[int], num_classes: int, width: float = 1.0
) -> MobileNetV2:
    """Build MobileNetV2 for images of ``image_shape`` (C, H, W).

    Args:
        image_shape: Input shape (C, H, W); the design targets 32x32.
        num_classes: Number of output logits.
        width: Width multiplier, 1.0 for the standard network.

    Raises:
        ModelSpecError: The shape, class count or width is invalid.
    """
    check_image_shape(image_shape, num_classes)
    if not width > 0:
        raise ModelSpecError(f"width is {width}, expected a positive multiplier")

    model = MobileNetV2(int(image_shape[0]), num_classes, width)
    logger.debug(
        "built MobileNetV2 width %s with %d parameters",
        width,
        sum(p.numel() for p in model.parameters()),
    )
    return model
