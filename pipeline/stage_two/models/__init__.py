"""Face backbones by name, and the size measures used to choose students."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.errors import FacekdError
from pipeline.stage_two.models.iresnet import IRESNET_BLOCKS, IResNet
from pipeline.stage_two.models.mobilefacenet import MobileFaceNet

BACKBONE_NAMES = (*IRESNET_BLOCKS, "mobilefacenet")


def build_backbone(name: str, embedding_dim: int = 512, input_size: int = 112, width: float = 1.0) -> nn.Module:
    """A freshly initialised backbone mapping (B, 3, input_size, input_size) images to (B, embedding_dim)."""
    if name in IRESNET_BLOCKS:
        return IResNet(IRESNET_BLOCKS[name], embedding_dim, input_size, width)
    if name == "mobilefacenet":
        return MobileFaceNet(embedding_dim, input_size, width)
    raise FacekdError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONE_NAMES)}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block (fixed BatchNorm statistics, no dropout), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_multiply_adds(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of the Conv2d and Linear layers for one (3, input_size, input_size) image.

    Measured by running one image through the model, so it counts what forward really does.
    Normalisation, activations and additions are left out, as is customary.
    """
    multiply_adds = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal multiply_adds
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            per_output = module.in_channels // module.groups * kernel_h * kernel_w
            multiply_adds += output[0].numel() * per_output
        else:
            multiply_adds += output[0].numel() * module.in_features

    handles = [
        module.register_forward_hook(count) for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return multiply_adds
