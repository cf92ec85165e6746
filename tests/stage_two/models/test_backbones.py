import pytest
import torch
from torch import nn

from pipeline.errors import FacekdError
from pipeline.stage_two.models import BACKBONE_NAMES, build_backbone, count_multiply_adds, count_parameters
from pipeline.stage_two.models.iresnet import IBasicBlock


def forward(model: nn.Module, batch_size: int, input_size: int) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(batch_size, 3, input_size, input_size))


@pytest.mark.parametrize("input_size", [112, 64])
@pytest.mark.parametrize("name", [name for name in BACKBONE_NAMES if name != "iresnet100"])
def test_backbone_maps_images_to_embeddings(name, input_size):
    model = build_backbone(name, embedding_dim=128, input_size=input_size, width=0.25)
    assert forward(model, 2, input_size).shape == (2, 128)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_full_width_backbone_gives_512_d_embeddings(name):
    embeddings = forward(build_backbone(name, input_size=64), 2, 64)
    assert embeddings.shape == (2, 512)
    assert torch.isfinite(embeddings).all()


def test_iresnet100_runs_at_tiny_size():
    assert forward(build_backbone("iresnet100", input_size=32, width=0.25), 1, 32).shape == (1, 512)


@pytest.mark.parametrize("input_size, final_side", [(16, 1), (40, 3), (64, 4), (112, 7)])
def test_head_follows_input_size(input_size, final_side):
    iresnet = build_backbone("iresnet18", input_size=input_size, width=0.25)
    assert iresnet.fc.in_features == 128 * final_side * final_side
    mobilefacenet = build_backbone("mobilefacenet", input_size=input_size, width=0.25)
    global_depthwise = mobilefacenet.head[0]
    assert global_depthwise.kernel_size == (final_side, final_side)
    for model in (iresnet, mobilefacenet):
        assert forward(model, 2, input_size).shape == (2, 512)


def test_width_scales_stage_channels():
    model = build_backbone("iresnet18", input_size=32, width=0.5)
    assert [getattr(model, f"layer{k}")[0].conv1.out_channels for k in (1, 2, 3, 4)] == [32, 64, 128, 256]


def test_iresnet_uses_insightface_parameter_names():
    keys = build_backbone("iresnet18", input_size=16, width=0.25).state_dict().keys()
    assert {"conv1.weight", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.downsample.0.weight", "bn2.weight",
            "fc.weight", "fc.bias", "features.running_var"} <= set(keys)
    assert "layer1.1.downsample.0.weight" not in keys


def test_backbones_train_end_to_end():
    model = build_backbone("mobilefacenet", embedding_dim=16, input_size=16, width=0.25)
    model(torch.randn(4, 3, 16, 16)).pow(2).sum().backward()
    first_conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(FacekdError, match="resnet18.*iresnet18, iresnet34, iresnet50, iresnet100, mobilefacenet"):
        build_backbone("resnet18")


@pytest.mark.parametrize("kwargs, message", [({"input_size": 8}, "input_size must be >= 16"),
                                             ({"width": 0.0}, "width must be > 0")])
def test_bad_sizes_are_rejected(kwargs, message):
    with pytest.raises(FacekdError, match=message):
        build_backbone("mobilefacenet", **kwargs)


def test_multiply_adds_of_a_tiny_model_match_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4: 4*4*4 outputs x 3*3*3 = 1728
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise: 64 outputs x 1*3*3 = 576
        nn.Flatten(),
        nn.Linear(64, 5),  # 64 * 5 = 320
    )
    assert count_multiply_adds(model, 8) == 1728 + 576 + 320
    assert count_parameters(model) == (4 * 27 + 4) + (4 * 9 + 4) + (64 * 5 + 5)


def test_multiply_adds_of_a_residual_block_match_hand_count():
    block = IBasicBlock(3, 8, stride=2)
    conv1 = 8 * 8 * 8 * (3 * 9)  # 3x3, 3 -> 8 channels at 8x8
    conv2 = 4 * 4 * 8 * (8 * 9)  # 3x3 stride 2, 8 -> 8 channels, 4x4 out
    downsample = 4 * 4 * 8 * 3  # 1x1 stride 2, 3 -> 8 channels
    assert count_multiply_adds(block.train(), 8) == conv1 + conv2 + downsample
    assert block.training
    assert not block._forward_hooks and not block.conv1._forward_hooks


def test_parameter_count_includes_frozen_parameters():
    model = build_backbone("iresnet18", embedding_dim=8, input_size=16, width=0.25)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    assert count_parameters(model) == trainable + 8  # the embedding BatchNorm's fixed scale
