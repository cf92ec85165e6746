"""iResNet, the ArcFace teacher family (Duta et al. 2020, as in insightface `arcface_torch`).

Pre-activation basic blocks with PReLU, four stride-2 stages, and a flatten + Linear head (no
global pooling), so the head's input size follows from the image size. `width` scales every
stage so the same code yields teachers and thin students. Parameter names match insightface's,
so its published iresnet checkpoints (width 1.0, 112 px) load with `load_state_dict`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.stage_two.models.sizing import check_input_size, final_feature_size, scaled_channels

STAGE_CHANNELS = (64, 128, 256, 512)

# Blocks per stage, as in insightface.
IRESNET_BLOCKS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the input (through 1x1 conv + BN if shapes change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.downsample(x)


class IResNet(nn.Module):
    """iResNet with `blocks_per_stage[k]` blocks in stage k; maps (B, 3, S, S) images to (B, embedding_dim)."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        embedding_dim: int = 512,
        input_size: int = 112,
        width: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_input_size(input_size)
        channels = [scaled_channels(c, width) for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.prelu = nn.PReLU(channels[0])
        in_channels = channels[0]
        for stage, (out_channels, num_blocks) in enumerate(zip(channels, blocks_per_stage, strict=True), 1):
            blocks = [IBasicBlock(in_channels, out_channels, stride=2)]
            blocks += [IBasicBlock(out_channels, out_channels, stride=1) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_channels = out_channels
        side = final_feature_size(input_size)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
        # As in insightface, the embedding BatchNorm keeps its scale at 1: only its shift is learnt.
        self.features.weight.requires_grad = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))
