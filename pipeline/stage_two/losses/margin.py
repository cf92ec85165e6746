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

import numpy as np
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


def sample_classes(positives: Tensor, num_classes: int, num_sampled: int, seed: list[int]) -> Tensor:
    """Sorted indices of `num_sampled` of `num_classes` classes: every one of the sorted `positives`,
    the rest drawn at random from `seed` (all positives when they alone fill the sample)."""
    if positives.numel() >= num_sampled:
        return positives
    draw = np.random.default_rng(seed).random(num_classes, dtype=np.float32)
    scores = torch.from_numpy(draw).to(positives.device)
    scores[positives] = 2.0  # above every draw in [0, 1): always kept
    return scores.topk(num_sampled).indices.sort().values


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

    def cosine(self, embeddings: Tensor, centres: Tensor | None = None) -> Tensor:
        """B x C cosines between the embeddings and the class centres (default all; no margin)."""
        centres = self.weight if centres is None else centres
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(centres, dim=1)).clamp(-1.0, 1.0)

    def margin_logits(self, embeddings: Tensor, labels: Tensor, centres: Tensor | None = None) -> Tensor:
        """The logits the cross-entropy sees: scaled, with the margin on the target class."""
        return combined_margin_logits(
            self.cosine(embeddings, centres), labels, self.s, self.m1, self.m2, self.m3, self.easy_margin
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.margin_logits(embeddings, labels), labels)


class SampledCentresHead(CombinedMarginHead):
    """A margin head whose training steps use, and update, a sample of its class centres (Partial FC).

    A step's centres are a copy of the sampled rows (a leaf tensor): the backward pass makes an
    S x D gradient instead of a C x D one, and the C x D `weight` gets no gradient, so the
    optimizer skips it. `update_sampled`, called after the optimizer's step, applies the same SGD
    rule (momentum, weight decay) to the sampled rows alone, their momentum kept per centre in the
    `momentum` buffer (saved with the weights). Centres not drawn keep their weight and momentum,
    as in insightface's first Partial FC: decaying every centre at every step (its v2, with a dense
    optimizer) costs C x D per step whatever the sample rate; at 50,000 identities and 5,000
    centres a step it added ~120 ms to a ~300 ms student step (a 50,000 x 512 gradient, and the
    optimizer's 4 ms became 65 ms).
    """

    def _init_sampling(self, num_rows: int, sample_rate: float, seed: int) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise FacekdError(f"margin sample rate is {sample_rate}; expected a fraction in (0, 1]")
        self.num_sampled = min(num_rows, math.ceil(sample_rate * num_rows))
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        if self.samples:
            self.register_buffer("momentum", torch.zeros_like(self.weight))
        self.sampled: tuple[Tensor, Tensor] | None = None  # (rows, their centres) of the step in flight

    @property
    def samples(self) -> bool:
        """Whether training steps sample centres (else every step uses the whole `weight`, as the full head)."""
        return self.num_sampled < self.weight.shape[0]

    def sampled_centres(self, rows: Tensor) -> Tensor:
        """This step's centres: a copy of `weight[rows]` that collects their gradient."""
        centres = self.weight.detach()[rows].requires_grad_()
        self.sampled = (rows, centres)
        return centres

    def sampled_parameters(self) -> list[Tensor]:
        """The centres of the step in flight (with their gradient after backward), for clipping and norms."""
        return [] if self.sampled is None else [self.sampled[1]]

    @torch.no_grad()
    def update_sampled(self, lr: float, momentum: float, weight_decay: float) -> None:
        """SGD on the sampled rows, as `torch.optim.SGD` (no dampening, no Nesterov) updates a parameter."""
        if self.sampled is None:
            return
        rows, centres = self.sampled
        self.sampled = None
        if centres.grad is None:
            return
        step = self.momentum.index_select(0, rows).mul_(momentum).add_(centres.grad.add(centres, alpha=weight_decay))
        self.momentum.index_copy_(0, rows, step)
        self.weight.index_copy_(0, rows, centres.sub_(step, alpha=lr))


class PartialMarginHead(SampledCentresHead):
    """The combined margin softmax over a sampled fraction of the class centres (Partial FC).

    An, Deng et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021;
    numerics as insightface `arcface_torch/partial_fc_v2.py`: each training step keeps every
    class of the batch (its positives) and fills the rest of ⌈sample_rate·C⌉ centres with
    randomly drawn classes, so the softmax costs sample_rate of the full head's. The draw is a
    function of (seed, step) and `step` is a buffer, so a resumed run (the checkpoint holds the
    state dict) draws the same classes. With sample_rate 1, or in eval mode, it is the full head.
    """

    def __init__(self, embedding_dim: int, num_classes: int, sample_rate: float, seed: int = 0, **margins: float) -> None:
        super().__init__(embedding_dim, num_classes, **margins)
        self._init_sampling(num_classes, sample_rate, seed)

    def sample_classes(self, labels: Tensor) -> Tensor:
        """Sorted indices of this step's centres: the batch's classes plus random others."""
        return sample_classes(torch.unique(labels), self.weight.shape[0], self.num_sampled, [self.seed, int(self.step)])

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if not self.training or not self.samples:
            return super().forward(embeddings, labels)
        classes = self.sample_classes(labels)
        self.step += 1
        sampled_labels = torch.searchsorted(classes, labels)
        logits = self.margin_logits(embeddings, sampled_labels, self.sampled_centres(classes))
        return F.cross_entropy(logits, sampled_labels)


def margin_head(
    kind: str,
    embedding_dim: int,
    num_classes: int,
    s: float = 64.0,
    margin: float | None = None,
    sample_rate: float = 1.0,
    seed: int = 0,
) -> CombinedMarginHead:
    """ArcFace (additive angular margin m2, default 0.5) or CosFace (additive cosine margin
    m3, default 0.35) as a `CombinedMarginHead`; with `sample_rate` < 1 a `PartialMarginHead`
    that samples that fraction of the centres at every step (seeded by `seed`)."""
    if sample_rate != 1.0:
        return PartialMarginHead(embedding_dim, num_classes, sample_rate, seed, **margin_values(kind, s, margin))
    return CombinedMarginHead(embedding_dim, num_classes, **margin_values(kind, s, margin))


def margin_values(kind: str, s: float = 64.0, margin: float | None = None) -> dict[str, float]:
    """The scale and margins of a `CombinedMarginHead` for ArcFace (m2) or CosFace (m3); `margin` None: the default."""
    if kind not in DEFAULT_MARGINS:
        raise FacekdError(f"margin head kind must be one of {sorted(DEFAULT_MARGINS)}, got {kind!r}")
    margin = DEFAULT_MARGINS[kind] if margin is None else margin
    return {"s": s, "m2": margin} if kind == "arcface" else {"s": s, "m2": 0.0, "m3": margin}
