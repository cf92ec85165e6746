"""The distillation objective: which KD terms a student trains with, and their weights.

Every term of `method.md`'s ablation is a weight here; a zero weight leaves the term out (and
builds none of its state). Per-sample terms (Raw L2, FC, ILED, AdaArcDistill) compare the
student with the teacher in the teacher's space, through a projector when the dimensions
differ; relation terms (RKD, SP, RPSD) compare similarities and use the raw student embedding.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.stage_two.config import DistillationConfig
from pipeline.stage_two.losses import (
    AdaArcDistillLoss, FCLoss, ILEDLoss, RawL2Loss, RKDLoss, RPSDLoss, SPLoss, embedding_projector, iled_rho,
)
from pipeline.stage_two.distributed import gather_from_all_ranks
from pipeline.stage_two.memory import MemoryBank


class Distiller(nn.Module):
    """Computes the weighted KD terms of one step and keeps their state (bank, centres, projector)."""

    def __init__(
        self, config: DistillationConfig, student_dim: int, teacher_dim: int, num_classes: int, epochs: int
    ) -> None:
        super().__init__()
        self.config = config
        # Only the per-sample terms compare s with t directly; a projector nothing uses would get
        # no gradient (and DDP refuses unused parameters).
        per_sample = any(getattr(config, name) > 0 for name in ("raw_l2", "fc", "iled", "adaarc"))
        self.projector = embedding_projector(student_dim, teacher_dim) if per_sample else nn.Identity()
        self.ramp_epochs = epochs / 2 if config.iled_ramp_epochs is None else config.iled_ramp_epochs
        self.per_sample_terms = nn.ModuleDict(
            {name: loss for name, loss in (("raw_l2", RawL2Loss()), ("fc", FCLoss())) if getattr(config, name) > 0}
        )
        self.relation_terms = nn.ModuleDict(
            {name: loss for name, loss in (("rkd", RKDLoss()), ("sp", SPLoss())) if getattr(config, name) > 0}
        )
        self.iled = ILEDLoss(config.iled_beta) if config.iled > 0 else None
        self.adaarc = (
            AdaArcDistillLoss(teacher_dim, num_classes, config.adaarc_scale, config.adaarc_margin)
            if config.adaarc > 0 else None
        )
        self.rpsd = (
            RPSDLoss(config.rpsd_k_neg, config.rpsd_variant, config.rpsd_temperature) if config.rpsd > 0 else None
        )
        self.memory = MemoryBank(config.rpsd_bank_size if self.rpsd else 0, teacher_dim, student_dim)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor, indices: Tensor, epoch: float) -> dict[str, Tensor]:
        """Weighted terms by name; `epoch` (fractional) drives ILED's hard fraction ρ."""
        config = self.config
        projected = self.projector(student)
        terms: dict[str, Tensor] = {}
        for name, loss in self.per_sample_terms.items():
            terms[name] = getattr(config, name) * loss(projected, teacher)
        for name, loss in self.relation_terms.items():
            terms[name] = getattr(config, name) * loss(student, teacher)
        if self.iled is not None:
            rho = iled_rho(epoch, config.iled_rho0, config.iled_rho_min, self.ramp_epochs)
            terms["iled"] = config.iled * self.iled(projected, teacher, rho)
        if self.adaarc is not None:
            terms["adaarc"] = config.adaarc * self.adaarc(projected, teacher, labels)
        if self.rpsd is not None:
            terms["rpsd"] = config.rpsd * self.rpsd(student, teacher, labels, indices, self.memory.filled())
        return terms

    @torch.no_grad()
    def remember(self, student: Tensor, teacher: Tensor, labels: Tensor, indices: Tensor) -> None:
        """Enqueue this step's samples of every rank into the memory bank (after the loss)."""
        if self.memory.capacity == 0:
            return
        self.memory.enqueue(
            gather_from_all_ranks(teacher), gather_from_all_ranks(student),
            gather_from_all_ranks(labels), gather_from_all_ranks(indices),
        )
