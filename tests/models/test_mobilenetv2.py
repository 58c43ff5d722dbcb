import pytest
import torch
from torch import nn

from memdeploy.errors import ModelSpecError
from memdeploy.models.mobilenetv2 import InvertedResidual, build_mobilenetv2

CIFAR_SHAPE = (3, 32, 32)
DIGITAL_LAYERS = (nn.BatchNorm2d,)
CROSSBAR_LAYERS = (nn.Conv2d, nn.Linear)


def seeded_model(seed=0, num_classes=10, width=0.25):
    torch.manual_seed(seed)
    return build_mobilenetv2(CIFAR_SHAPE, num_classes, width=width)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_mobilenetv2_maps_cifar_batch_to_logits():
    model = seeded_model().eval()

    logits = model(torch.rand(2, *CIFAR_SHAPE))

    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_mobilenetv2_full_width_parameter_count():
    # 1000 classes instead of 10 gives 3,504,872, the ImageNet MobileNetV2 count.
    assert parameter_count(build_mobilenetv2(CIFAR_SHAPE, 10)) == 2_236_682
    assert parameter_count(build_mobilenetv2(CIFAR_SHAPE, 100)) == 2_351_972


def test_mobilenetv2_quarter_width_parameter_count():
    assert parameter_count(seeded_model(width=0.25)) == 250_922


def test_mobilenetv2_stem_keeps_32x32_resolution():
    model = seeded_model().eval()
    stem = model.features[0]

    assert stem[0].stride == (1, 1)
    assert model.features(torch.rand(2, *CIFAR_SHAPE)).shape == (2, 1280, 2, 2)


def test_mobilenetv2_block_and_shortcut_counts():
    model = seeded_model(width=1.0)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]

    assert len(blocks) == 17
    assert sum(block.use_residual for block in blocks) == 10


def test_mobilenetv2_parameter_layer_types():
    for module in seeded_model().modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, CROSSBAR_LAYERS + DIGITAL_LAYERS), module


def test_mobilenetv2_same_seed_same_model():
    first, second = seeded_model(seed=3).eval(), seeded_model(seed=3).eval()
    images = torch.rand(2, *CIFAR_SHAPE)

    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(first(images), second(images))


def test_mobilenetv2_other_seed_other_weights():
    first, second = seeded_model(seed=3), seeded_model(seed=4)

    assert not torch.equal(first.features[0][0].weight, second.features[0][0].weight)


def test_mobilenetv2_accepts_grayscale_28x28():
    model = build_mobilenetv2((1, 28, 28), 10, width=0.25).eval()

    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(3, 32), (0, 32, 32)])
def test_mobilenetv2_bad_image_shape_is_rejected(shape):
    with pytest.raises(ModelSpecError, match=r"image_shape is .*, expected \(channels"):
        build_mobilenetv2(shape, 10)


def test_mobilenetv2_zero_width_is_rejected():
    with pytest.raises(ModelSpecError, match="width is 0, expected a positive"):
        build_mobilenetv2(CIFAR_SHAPE, 10, width=0)


def test_mobilenetv2_single_class_is_rejected():
    with pytest.raises(ModelSpecError, match="num_classes is 1, expected at least 2"):
        build_mobilenetv2(CIFAR_SHAPE, 1)
