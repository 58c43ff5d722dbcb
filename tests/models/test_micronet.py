import pytest
import torch
from torch import nn

from memdeploy.errors import ModelSpecError
from memdeploy.models.micronet import (
    ChannelShuffle,
    DynamicShiftMax,
    MicroBlock,
    MicroFactorizedDepthwise,
    MicroFactorizedPointwise,
    build_micronet,
)

CIFAR_SHAPE = (3, 32, 32)


def seeded_model(seed=0, num_classes=100):
    torch.manual_seed(seed)
    return build_micronet(CIFAR_SHAPE, num_classes)


def parameter_count(model: nn.Module, kind=nn.Module) -> int:
    return sum(
        parameter.numel()
        for module in model.modules()
        if isinstance(module, kind)
        for parameter in module.parameters(recurse=False)
    )


def test_micronet_maps_cifar_batch_to_100_logits():
    logits = seeded_model().eval()(torch.rand(2, *CIFAR_SHAPE))

    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()


def test_micronet_parameter_counts():
    model = seeded_model()

    assert parameter_count(model) == 335_652
    assert parameter_count(model, nn.Conv2d) == 22_232
    assert parameter_count(model, nn.Linear) == 306_412
    assert parameter_count(model, nn.BatchNorm2d) == 7_008


def test_micronet_parameter_layer_types():
    for module in seeded_model().modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)), module


def test_micronet_same_seed_same_model():
    first, second = seeded_model(seed=3).eval(), seeded_model(seed=3).eval()
    images = torch.rand(2, *CIFAR_SHAPE)

    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(first(images), second(images))


def test_micronet_other_seed_other_weights():
    first, second = seeded_model(seed=3), seeded_model(seed=4)

    assert not torch.equal(first.features[0][0].weight, second.features[0][0].weight)


def test_micronet_backward_reaches_every_conv():
    model = seeded_model()
    model(torch.rand(2, *CIFAR_SHAPE)).sum().backward()

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.weight.grad is not None, name
            assert torch.isfinite(module.weight.grad).all(), name


def test_depthwise_is_factorized_into_kx1_and_1xk():
    first, second = (block[0] for block in MicroFactorizedDepthwise(8, 3, 2, 2))

    assert (first.kernel_size, first.stride, first.groups) == ((3, 1), (2, 1), 8)
    assert (first.in_channels, first.out_channels) == (8, 16)
    assert (second.kernel_size, second.stride, second.groups) == ((1, 3), (1, 2), 16)


def test_pointwise_is_two_group_convs_around_a_shuffle():
    pointwise = MicroFactorizedPointwise(96, 32, 64)
    compress, activation, shuffle, expand = pointwise

    assert (compress[0].in_channels, compress[0].out_channels, compress[0].groups) == (
        96,
        32,
        4,
    )
    assert isinstance(activation, DynamicShiftMax)
    assert shuffle.groups == 4
    assert (expand[0].in_channels, expand[0].out_channels, expand[0].groups) == (
        32,
        64,
        4,
    )


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)

    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shift_max_starts_as_relu():
    x = torch.randn(3, 8, 4, 4)

    assert torch.equal(DynamicShiftMax(8, groups=2)(x), x.clamp(min=0))


def test_shift_max_fuses_channels_shifted_by_one_group():
    activation = DynamicShiftMax(8, groups=2)
    # With these biases a[0] = (1, 1) and a[1] = (-1, -1) for every channel, because
    # a = init + 2 * hardsigmoid(bias) - 1 and init is 1 only for a[0, 0].
    bias = torch.tensor([0.0, 10.0, -10.0, -10.0]).repeat_interleave(8)
    activation.hyper[-1].bias.data.copy_(bias)
    x = torch.randn(2, 8, 3, 3)

    expected = (x + torch.roll(x, -4, dims=1)).abs()

    assert torch.allclose(activation(x), expected)


def test_block_c_adds_residual_only_for_same_shape():
    assert MicroBlock("C", 32, 32, stride=1, multiplier=3).use_residual
    assert not MicroBlock("C", 32, 64, stride=1, multiplier=3).use_residual
    assert not MicroBlock("C", 32, 32, stride=2, multiplier=3).use_residual
    assert not MicroBlock("A", 24, 24, stride=1, multiplier=2).use_residual


def test_micronet_final_features_are_4x4():
    features = seeded_model().eval().features(torch.rand(2, *CIFAR_SHAPE))

    assert features.shape == (2, 128, 4, 4)


@pytest.mark.parametrize("shape", [(3, 32), (3, 0, 32)])
def test_micronet_bad_image_shape_is_rejected(shape):
    with pytest.raises(ModelSpecError, match=r"image_shape is .*, expected \(channels"):
        build_micronet(shape, 100)


def test_micronet_single_class_is_rejected():
    with pytest.raises(ModelSpecError, match="num_classes is 1, expected at least 2"):
        build_micronet(CIFAR_SHAPE, 1)
