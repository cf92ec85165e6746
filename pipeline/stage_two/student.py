"""The student being trained: backbone, margin head and KD terms as one module."""
from __future__ import annotations

from torch import Tensor, nn

from pipeline.stage_two.config import TrainConfig
from pipeline.stage_two.distill import Distiller
from pipeline.stage_two.losses import CombinedMarginHead, SampledCentresHead, ShardedMarginHead, margin_head, margin_values
from pipeline.stage_two.models import build_backbone


class StudentModel(nn.Module):
    """Backbone + margin head + KD terms in one module, so DDP synchronises their gradients.

    Except the class centres: with several ranks (`world_size` > 1) the margin head is a
    `ShardedMarginHead`, each rank holding and updating its own range of them (`sharded_parameter_names`).
    """

    def __init__(
        self, config: TrainConfig, input_size: int, num_classes: int, teacher_dim: int | None, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(config.backbone, config.embedding_dim, input_size, config.width)
        self.head = _margin_head(config, num_classes, rank, world_size) if config.margin_weight > 0 else None
        self.margin_weight = config.margin_weight
        self.distiller = (
            Distiller(config.distillation, config.embedding_dim, teacher_dim, num_classes, config.epochs)
            if config.distillation.uses_teacher and teacher_dim else None
        )

    def forward(
        self, images: Tensor, labels: Tensor, targets: Tensor, indices: Tensor, epoch: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        embeddings = self.backbone(images)
        terms: dict[str, Tensor] = {}
        if self.head is not None:
            terms["margin"] = self.margin_weight * self.head(embeddings, labels)
        if self.distiller is not None:
            terms.update(self.distiller(embeddings, targets, labels, indices, epoch))
        return embeddings, terms

    def sharded_parameter_names(self) -> list[str]:
        """Parameters (and buffers) of which each rank holds its own part: DDP must neither broadcast nor average them."""
        if not isinstance(self.head, ShardedMarginHead):
            return []
        return ["head.weight", "head.momentum"] if self.head.samples else ["head.weight"]

    def sampled_parameter_names(self) -> list[str]:
        """Parameters that training updates only where sampled (`update_sampled_centres`), never whole."""
        return ["head.weight"] if isinstance(self.head, SampledCentresHead) and self.head.samples else []

    def sampled_centres(self) -> list[Tensor]:
        """The class centres of the step in flight where the head samples them (Partial FC): trained
        by `update_sampled_centres`, not by the optimizer, yet clipped with the parameters."""
        return self.head.sampled_parameters() if isinstance(self.head, SampledCentresHead) else []

    def update_sampled_centres(self, lr: float, momentum: float, weight_decay: float) -> None:
        """After the optimizer's step: the same SGD step for the sampled centres (none without sampling)."""
        if isinstance(self.head, SampledCentresHead):
            self.head.update_sampled(lr, momentum, weight_decay)


def _margin_head(config: TrainConfig, num_classes: int, rank: int, world_size: int) -> CombinedMarginHead:
    """The full (or Partial FC) head on one process; over several ranks, the head sharded across them."""
    if world_size > 1:
        return ShardedMarginHead(
            config.embedding_dim, num_classes, rank, world_size, config.margin_sample_rate, config.seed,
            **margin_values(config.margin, config.margin_scale, config.margin_value),
        )
    return margin_head(
        config.margin, config.embedding_dim, num_classes, config.margin_scale, config.margin_value,
        config.margin_sample_rate, config.seed,
    )
