"""Digital-to-analog and analog-to-digital conversion around a crossbar.

Shared by the backends that compute a layer's output from weights rather than on the
array: inputs are quantized by the DAC, outputs by the ADC, each over the batch's own
range, and output noise is added before the ADC.
"""

from __future__ import annotations

import torch

from memdeploy.profiles import PeripherySpec


def quantize_symmetric(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Round values to `2**(bits-1) - 1` steps each side of zero over their max|x|.

    >>> quantize_symmetric(torch.tensor([0.1, -1.0]), 2).tolist()
    [0.0, -1.0]
    """
    if bits <= 0:
        return values
    bound = values.detach().abs().amax().clamp(min=torch.finfo(values.dtype).tiny)
    steps = max(2 ** (bits - 1) - 1, 1)
    return torch.round(values / bound * steps) * (bound / steps)


def convert_inputs(inputs: torch.Tensor, spec: PeripherySpec) -> torch.Tensor:
    """Apply the input DAC."""
    return quantize_symmetric(inputs, spec.dac_bits)


def convert_outputs(
    outputs: torch.Tensor, spec: PeripherySpec, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add output noise relative to the batch's output range, then apply the ADC."""
    if spec.output_noise > 0:
        bound = outputs.detach().abs().amax()
        noise = torch.randn(
            outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device
        )
        outputs = outputs + noise * (spec.output_noise * bound)
    return quantize_symmetric(outputs, spec.adc_bits)
