"""Published distillation losses that form the rows of our ablation table.

All take row-aligned student and teacher embeddings of one batch; Raw L2, FC and
AdaArcDistill need equal dimensions (project the student first), RKD and SP compare
within-batch relations and accept any two dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.stage_two.losses.iled import cosine_distance
from pipeline.stage_two.losses.margin import combined_margin_logits
from pipeline.stage_two.distributed import gather_from_all_ranks


class RawL2Loss(nn.Module):
    """Raw L2 feature distillation: mean_i ||s_i − t_i||² on un-normalised embeddings
    (the "L2 KD" baseline of AdaDistill, Boutros et al., ECCV 2024)."""

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return (student - teacher).pow(2).sum(dim=1).mean()


class FCLoss(nn.Module):
    """Feature consistency, the normalised-embedding baseline named by arXiv 2508.11376:
    mean_i ||ŝ_i − t̂_i||² = 2·mean_i (1 − ŝ_i·t̂_i)."""

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return 2.0 * cosine_distance(student, teacher).mean()


def _pairwise_distances(embeddings: Tensor) -> Tensor:
    """B x B Euclidean distances with an exact zero diagonal (no sqrt(0) gradient)."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.T).clamp_min(1e-12)
    off_diagonal = ~torch.eye(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    return torch.where(off_diagonal, squared.sqrt(), torch.zeros_like(squared))


def _mean_normalised_distances(embeddings: Tensor) -> Tensor:
    distances = _pairwise_distances(embeddings)
    return distances / distances[distances > 0].mean()


def _triplet_angles(embeddings: Tensor) -> Tensor:
    """B x B x B; [i, j, k] is the cosine of the angle at e_i between e_j and e_k."""
    differences = F.normalize(embeddings[None, :, :] - embeddings[:, None, :], dim=2)
    return differences @ differences.transpose(1, 2)


class RKDLoss(nn.Module):
    """Relational KD (Park et al., "Relational Knowledge Distillation", CVPR 2019).

    Distance term: smooth-L1 between pairwise distances, each divided by its mean over the
    distinct pairs; angle term: smooth-L1 between the cosines of all triplet angles.
    Weights 1 : 2 as in the paper; applied to the raw embeddings as in the authors' code.
    Memory is B³ for the angle term (B = 256: 16.7M entries).
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_distances = _mean_normalised_distances(teacher)
            teacher_angles = _triplet_angles(teacher)
        distance_loss = F.smooth_l1_loss(_mean_normalised_distances(student), teacher_distances)
        angle_loss = F.smooth_l1_loss(_triplet_angles(student), teacher_angles)
        return self.distance_weight * distance_loss + self.angle_weight * angle_loss


class SPLoss(nn.Module):
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge
    Distillation", ICCV 2019): ||rownorm(S Sᵀ) − rownorm(T Tᵀ)||²_F / B² on raw embeddings."""

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        student_gram = F.normalize(student @ student.T, dim=1)
        teacher_gram = F.normalize(teacher @ teacher.T, dim=1)
        return (student_gram - teacher_gram).pow(2).sum() / student.shape[0] ** 2


class AdaArcDistillLoss(nn.Module):
    """AdaArcDistill (Boutros et al., "AdaDistill: Adaptive Knowledge Distillation for Deep
    Face Recognition", ECCV 2024): ArcFace whose class centres are built from the teacher.

    The centres W (C x D) are a buffer, never trained by gradient. Each forward, before the
    logits, under no_grad and with the centres as they were at the start of the step:
        α'_i = clamp(cos(ŝ_i, t̂_i) · clamp(cos(w_{y_i}, t̂_i), 1e-6, 1), 1e-6, 1)
        w_{y_i} ← α'_i · w_{y_i} + (1 − α'_i) · t̂_i        (w un-normalised, t̂ normalised)
    A class that appears several times in the batch takes the update of its last sample
    (what the authors' index assignment does on CPU; made deterministic here). Centres start
    as N(0, 0.01), so cos(w_y, t̂) ≈ 0 on a class's first visit and w_y becomes ≈ t̂.
    The margin uses `combined_margin_logits` (insightface's threshold rule), which differs
    from the authors' plain cos(θ + m) only where θ > π − m.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.45) -> None:
        super().__init__()
        self.s, self.m = s, m
        self.register_buffer("centres", torch.normal(0.0, 0.01, (num_classes, embedding_dim)))

    @torch.no_grad()
    def update_centres(self, student: Tensor, teacher: Tensor, labels: Tensor) -> None:
        student_unit, teacher_unit = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        centres = self.centres[labels]
        centre_agreement = (F.normalize(centres, dim=1) * teacher_unit).sum(dim=1).clamp(1e-6, 1.0)
        alpha = ((student_unit * teacher_unit).sum(dim=1) * centre_agreement).clamp(1e-6, 1.0)
        updated = alpha[:, None] * centres + (1.0 - alpha[:, None]) * teacher_unit.to(centres.dtype)
        positions = torch.arange(labels.shape[0], device=labels.device)
        last_position = torch.full_like(self.centres[:, 0], -1, dtype=torch.int64).scatter_reduce(
            0, labels, positions, reduce="amax"
        )
        is_last = last_position[labels] == positions
        self.centres[labels[is_last]] = updated[is_last]

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        # Under DDP every rank updates its centres with the samples of all ranks, so they stay equal.
        self.update_centres(gather_from_all_ranks(student), gather_from_all_ranks(teacher), gather_from_all_ranks(labels))
        cosine = F.linear(F.normalize(student, dim=1), F.normalize(self.centres, dim=1)).clamp(-1.0, 1.0)
        logits = combined_margin_logits(cosine, labels, self.s, m2=self.m)
        return F.cross_entropy(logits, labels)
