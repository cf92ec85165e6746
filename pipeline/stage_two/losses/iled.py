"""ILED: instance-level embedding distillation with dynamic hard mining.

Reconstruction of the instance term of "Unified Knowledge Distillation Framework: Fine-Grained
Alignment and Geometric Relationship Preservation for Deep Face Recognition" (arXiv 2508.11376,
IJCB 2025); see `shared/method.md`. Each sample is pulled towards its teacher embedding by the
cosine distance δ_i = 1 − ŝ_i·t̂_i, and the ⌈ρ·B⌉ samples with the largest δ get an extra
weight β, so training concentrates on the samples the student matches worst. ρ shrinks over
training (`iled_rho`): early on every sample counts as hard, later only the hardest few.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import FacekdError


def cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-sample 1 − ŝ·t̂ between row-aligned embeddings of equal dimension."""
    return 1.0 - (F.normalize(student, dim=1) * F.normalize(teacher, dim=1)).sum(dim=1)


def iled_rho(epoch: float, rho0: float = 1.0, rho_min: float = 0.3, ramp_epochs: float = 1.0) -> float:
    """Hard fraction ρ(e) = ρ0 + (ρmin − ρ0)·min(1, e / E_ramp); `epoch` may be fractional.

    `ramp_epochs` <= 0 means no ramp: ρmin from the start.
    """
    for name, value in (("rho0", rho0), ("rho_min", rho_min)):
        if not 0.0 < value <= 1.0:
            raise FacekdError(f"ILED {name} must be in (0, 1], got {value}")
    progress = 1.0 if ramp_epochs <= 0 else min(1.0, max(0.0, epoch) / ramp_epochs)
    return rho0 + (rho_min - rho0) * progress


def hard_count(rho: float, batch_size: int) -> int:
    """⌈ρ·B⌉, at least 1; rounding first keeps e.g. 0.3·10 from counting as 4."""
    return min(batch_size, max(1, math.ceil(round(rho * batch_size, 9))))


class ILEDLoss(nn.Module):
    """L = mean_i d_i + β·mean_{i∈H} d_i, H = the ⌈ρ·B⌉ largest d chosen without gradient.

    d_i = ||ŝ_i − t̂_i||² = 2·δ_i with method.md's δ_i = 1 − ŝ_i·t̂_i: the same ordering and hard
    set, scaled so that β = 0 is exactly the FC loss (the "ILED without mining" ablation row).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if beta < 0:
            raise FacekdError(f"ILED beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(self, student: Tensor, teacher: Tensor, rho: float) -> Tensor:
        """`student` already projected to the teacher dimension; `rho` from `iled_rho`."""
        if not 0.0 < rho <= 1.0:
            raise FacekdError(f"ILED rho must be in (0, 1], got {rho}")
        distances = 2.0 * cosine_distance(student, teacher)
        hard = distances.detach().topk(hard_count(rho, distances.shape[0])).indices
        return distances.mean() + self.beta * distances[hard].mean()
