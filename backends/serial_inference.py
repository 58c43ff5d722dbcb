"""Inference through the serial array: on the chip, or on the host from read-back cells.

On the chip, a block's inputs become read voltages `x / max|x| x v_read_v` on its word
lines. Each output is the G+ bit-line current minus the G- one, scaled back to the
weight domain, and blocks that share outputs are summed on the host. On the host, the
weights rebuilt from read-back conductances go through the profile's periphery, as in
the simulators.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import CrossbarLayer
from backends.periphery import convert_inputs, convert_outputs
from backends.serial_client import ArrayClient
from backends.serial_commands import DeviceInfo
from backends.serial_mapping import Block
from memdeploy.profiles import PeripherySpec


def mvm_on_chip(
    client: ArrayClient,
    info: DeviceInfo,
    blocks: list[Block],
    scale: float,
    inputs: np.ndarray,
    out_features: int,
) -> torch.Tensor:
    """Multiply inputs (batch, in) by a layer's programmed blocks on the array."""
    outputs = np.zeros((inputs.shape[0], out_features), dtype=np.float64)
    bound = float(np.abs(inputs).max()) if inputs.size else 0.0
    if bound == 0.0:
        return torch.from_numpy(outputs.astype(np.float32))

    voltages = inputs / bound * info.v_read_v
    window = info.g_max_us - info.g_min_us
    # Current in µA per unit weight: the g_min offsets of G+ and G- cancel.
    unit = bound * scale / (info.v_read_v * window)
    for block in blocks:
        currents = client.mvm(
            block.tile, block.row0, block.col0, block.cols,
            np.ascontiguousarray(voltages[:, block.inputs], dtype=np.float32),
        )  # fmt: skip
        outputs[:, block.outputs] += (currents[:, 0::2] - currents[:, 1::2]) * unit
    return torch.from_numpy(outputs.astype(np.float32))


def infer_from_weights(
    layer: CrossbarLayer,
    weight: torch.Tensor,
    inputs: torch.Tensor,
    periphery: PeripherySpec,
    generator: torch.Generator,
    *,
    unrolled: bool = False,
) -> torch.Tensor:
    """Run inputs through read-back weights and the periphery on the host.

    With `unrolled`, inputs are vectors (batch, in) for the unrolled matrix, as `mvm`
    takes them; otherwise they have the layer's own input shape.
    """
    inputs = convert_inputs(inputs, periphery)
    if unrolled or layer.kind == "linear":
        outputs = F.linear(inputs, weight.reshape(layer.out_features, -1))
    else:
        outputs = F.conv2d(
            inputs, weight, None, layer.stride, layer.padding, layer.dilation,
            layer.groups,
        )  # fmt: skip
    return convert_outputs(outputs, periphery, generator)
