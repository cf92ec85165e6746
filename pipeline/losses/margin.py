"""Margin-based softmax heads: ArcFace and CosFace as one combined margin.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019 (the
combined margin cos(m1·θ + m2) − m3 is its Eq. 4, covering SphereFace m1, ArcFace m2 and
CosFace m3). The numerics follow insightface `recognition/arcface_torch/losses.py`
`CombinedMarginLoss`: cos(θ + m2) is computed as cos θ·cos m2 − sin θ·sin m2 (no arccos, so
the gradient stays finite), and where θ + m2 would pass π (cos stops decreasing there) the
target logit becomes cos θ − m2·sin m2 instead, or, with `easy_margin`, is left without margin
whenever cos θ <= 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import FacekdError

# Keeps sqrt(1 − cos²) and arccos away from their infinite slopes at cos = ±1.
_COSINE_EPS = 1e-12

DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35}


def combined_margin_logits(
    cosine: Tensor,
    labels: Tensor,
    s: float,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    easy_margin: bool = False,
) -> Tensor:
    """Scaled logits s·cos with the target class's cosine replaced by cos(m1·θ + m2) − m3.

    `cosine` is B x C (cosines between normalised embeddings and normalised class centres),
    `labels` holds the target class of each row.
    """
    target = cosine.gather(1, labels[:, None]).squeeze(1)
    if m1 == 1.0:
        sine = torch.sqrt((1.0 - target * target).clamp_min(_COSINE_EPS))
        angular = target * math.cos(m2) - sine * math.sin(m2)
    else:
        theta = torch.acos(target.clamp(-1.0 + _COSINE_EPS, 1.0 - _COSINE_EPS))
        angular = torch.cos(m1 * theta + m2)
    if easy_margin:
        angular = torch.where(target > 0, angular, target)
    else:
        # m1·θ + m2 < π  <=>  cos θ > cos((π − m2) / m1)
        threshold = math.cos(min(math.pi, (math.pi - m2) / m1))
        angular = torch.where(target > threshold, angular, target - m2 * math.sin(m2))
    margin_cosine = cosine.scatter(1, labels[:, None], (angular - m3)[:, None])
    return s * margin_cosine


class CombinedMarginHead(nn.Module):
    """Class-centre classifier trained with the combined margin softmax (insightface).

    Owns the C x D class-centre matrix; forward returns the cross-entropy loss.
    ArcFace: m2 = 0.5; CosFace: m3 = 0.35 (use `margin_head`).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if m1 <= 0:
            raise FacekdError(f"margin head m1 must be > 0, got {m1}")
        self.s, self.m1, self.m2, self.m3, self.easy_margin = s, m1, m2, m3, easy_margin
        # insightface (PartialFC) initialises the centres with N(0, 0.01).
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))

    def cosine(self, embeddings: Tensor) -> Tensor:
        """B x C cosines between the embeddings and every class centre (no margin)."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def margin_logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The logits the cross-entropy sees: scaled, with the margin on the target class."""
        return combined_margin_logits(
            self.cosine(embeddings), labels, self.s, self.m1, self.m2, self.m3, self.easy_margin
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.margin_logits(embeddings, labels), labels)


def margin_head(
    kind: str, embedding_dim: int, num_classes: int, s: float = 64.0, margin: float | None = None
) -> CombinedMarginHead:
    """ArcFace (additive angular margin m2, default 0.5) or CosFace (additive cosine margin
    m3, default 0.35) as a `CombinedMarginHead`."""
    if kind not in DEFAULT_MARGINS:
        raise FacekdError(f"margin head kind must be one of {sorted(DEFAULT_MARGINS)}, got {kind!r}")
    margin = DEFAULT_MARGINS[kind] if margin is None else margin
    if kind == "arcface":
        return CombinedMarginHead(embedding_dim, num_classes, s=s, m2=margin)
    return CombinedMarginHead(embedding_dim, num_classes, s=s, m2=0.0, m3=margin)
