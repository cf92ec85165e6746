"""The learning-rate schedule: linear warm-up, then polynomial or step decay (insightface's choices)."""
from __future__ import annotations

from pipeline.stage_two.config import OptimConfig


def learning_rate(config: OptimConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Linear warm-up, then polynomial decay to 0 or step decay at the milestones."""
    epoch = step / steps_per_epoch
    if epoch < config.warmup_epochs:
        return base_lr * (step + 1) / (config.warmup_epochs * steps_per_epoch)
    if config.schedule == "step":
        return base_lr * config.gamma ** sum(epoch >= milestone for milestone in config.milestones)
    progress = (epoch - config.warmup_epochs) / max(epochs - config.warmup_epochs, 1e-9)
    return base_lr * max(0.0, 1.0 - progress) ** config.power
