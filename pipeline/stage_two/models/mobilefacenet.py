"""MobileFaceNet (Chen et al. 2018), laid out as insightface `arcface_torch`'s "mbf" student.

Inverted-residual depthwise-separable blocks, then a global depthwise convolution (GDC) whose
kernel covers the whole final map: unlike average pooling it learns a weight per position, which
matters for aligned faces. At width 1.0 the channels are insightface's (128/256 in the body,
512 before the GDC); `width` scales the body only, as insightface's larger variant does. One
departure: the stem's second 3x3 is truly depthwise, as in the paper (insightface groups it by 64).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pipeline.stage_two.models.sizing import check_input_size, final_feature_size, scaled_channels

SEPARABLE_CHANNELS = 512  # the 1x1 expansion before the GDC, independent of width
STEM_CHANNELS = 128


class BodyStage(NamedTuple):
    """A stride-2 block followed by residual blocks, all ending at `out_channels`."""

    out_channels: int
    downsample_expanded: int  # expanded (depthwise) channels of the stride-2 block
    num_residual_blocks: int
    residual_expanded: int


BODY_STAGES = (
    BodyStage(out_channels=128, downsample_expanded=128, num_residual_blocks=4, residual_expanded=128),
    BodyStage(out_channels=256, downsample_expanded=256, num_residual_blocks=6, residual_expanded=256),
    BodyStage(out_channels=256, downsample_expanded=512, num_residual_blocks=2, residual_expanded=256),
)


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution + BatchNorm with "same" padding and no activation (a linear bottleneck)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def conv_bn_prelu(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, out_channels, kernel, stride, groups), nn.PReLU(out_channels))


class DepthwiseSeparable(nn.Module):
    """1x1 expand + PReLU, 3x3 depthwise (stride) + PReLU, linear 1x1 project; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, expanded_channels: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_prelu(in_channels, expanded_channels),
            conv_bn_prelu(expanded_channels, expanded_channels, 3, stride, groups=expanded_channels),
            conv_bn(expanded_channels, out_channels),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


class MobileFaceNet(nn.Module):
    """Maps (B, 3, S, S) images (S >= 16) to (B, embedding_dim) embeddings."""

    def __init__(self, embedding_dim: int = 512, input_size: int = 112, width: float = 1.0):
        super().__init__()
        check_input_size(input_size)
        stem_channels = scaled_channels(STEM_CHANNELS, width)
        body: list[nn.Module] = [
            conv_bn_prelu(3, stem_channels, 3, stride=2),
            conv_bn_prelu(stem_channels, stem_channels, 3, groups=stem_channels),
        ]
        in_channels = stem_channels
        for stage in BODY_STAGES:
            out_channels = scaled_channels(stage.out_channels, width)
            downsample_expanded = scaled_channels(stage.downsample_expanded, width)
            residual_expanded = scaled_channels(stage.residual_expanded, width)
            body.append(DepthwiseSeparable(in_channels, out_channels, downsample_expanded, stride=2))
            body += [
                DepthwiseSeparable(out_channels, out_channels, residual_expanded, stride=1)
                for _ in range(stage.num_residual_blocks)
            ]
            in_channels = out_channels
        body.append(conv_bn_prelu(in_channels, SEPARABLE_CHANNELS))
        self.body = nn.Sequential(*body)
        side = final_feature_size(input_size)
        self.head = nn.Sequential(
            nn.Conv2d(SEPARABLE_CHANNELS, SEPARABLE_CHANNELS, side, groups=SEPARABLE_CHANNELS, bias=False),  # GDC
            nn.BatchNorm2d(SEPARABLE_CHANNELS),
            nn.Flatten(),
            nn.Linear(SEPARABLE_CHANNELS, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))
