"""The margin head sharded across DDP ranks: each rank holds a contiguous range of the class centres.

An, Deng et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021;
the scheme of insightface `arcface_torch/partial_fc_v2.py`. Every rank gathers the embeddings and
labels of the whole (global) batch, computes the margin logits against its own centres (all of
them, or with a sample rate < 1 its classes of the batch plus a random fraction of the others),
and the softmax cross-entropy is computed across the ranks: only the row maxima, the sums of
exponentials and the target logits (B numbers each) are all-reduced. The centres' gradients never
leave their rank, so DDP must ignore them (`StudentModel.sharded_parameter_names`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.errors import FacekdError
from pipeline.stage_two.distributed import gather_from_all_ranks, gather_with_gradient
from pipeline.stage_two.losses.margin import SampledCentresHead, combined_margin_logits, sample_classes


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of B x C logits whose columns are split over the ranks.

    Each rank passes its columns and, per row, the target's column among them (-1: on another
    rank). The loss (the same on every rank) is that of the whole row: log Σ exp + max − target.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: Tensor, targets: Tensor) -> Tensor:
        row_max = logits.max(dim=1).values
        dist.all_reduce(row_max, dist.ReduceOp.MAX)
        exps = (logits - row_max[:, None]).exp()
        sum_exp = exps.sum(dim=1)
        dist.all_reduce(sum_exp)
        rows = (targets >= 0).nonzero().squeeze(1)
        target_logit = logits.new_zeros(logits.shape[0])
        target_logit[rows] = logits[rows, targets[rows]]
        dist.all_reduce(target_logit)  # one rank holds each row's target: the others add 0
        ctx.save_for_backward(exps / sum_exp[:, None], rows, targets[rows])
        return (sum_exp.log() + row_max - target_logit).mean()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: Tensor) -> tuple[Tensor, None]:
        probabilities, rows, columns = ctx.saved_tensors
        one_hot_removed = probabilities.index_put((rows, columns), probabilities.new_tensor(-1.0), accumulate=True)
        return one_hot_removed * (gradient / probabilities.shape[0]), None


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes [start, end) rank `rank` holds: contiguous, in rank order, sizes differing by at most one."""
    return num_classes * rank // world_size, num_classes * (rank + 1) // world_size


class ShardedMarginHead(SampledCentresHead):
    """The combined margin softmax over the global batch, its class centres split over the DDP ranks.

    `weight` holds this rank's centres only (classes `start` to `end`), initialised as the rows of
    the full head's N(0, 0.01) draw, so one seed gives the same centres whatever the world size.
    `sample_rate` < 1 applies per shard: each rank keeps every class of its range that is in the
    global batch plus random others up to ⌈sample_rate · shard size⌉, drawn from (seed, step,
    rank); `step` is a buffer, so a resumed run draws what the interrupted one would have. The
    sampled rows alone are updated (`SampledCentresHead`).

    Forward takes this rank's embeddings and labels and returns the global batch's mean loss (the
    same on every rank). DDP averages the backbone's gradients over the ranks, whereas this loss
    already covers the whole batch, so each rank's embeddings get world_size times their gradient
    (as insightface's all-gather does): the average is then the full head's gradient.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, rank: int, world_size: int, sample_rate: float = 1.0, seed: int = 0,
        **margins: float,
    ) -> None:
        if num_classes < world_size:
            raise FacekdError(f"{num_classes} classes cannot be sharded over {world_size} ranks: expected at least one per rank")
        super().__init__(embedding_dim, num_classes, **margins)
        self.num_classes, self.rank, self.world_size = num_classes, rank, world_size
        self.start, self.end = shard_range(num_classes, rank, world_size)
        self.weight = nn.Parameter(self.weight.detach()[self.start:self.end].clone())
        self._init_sampling(self.end - self.start, sample_rate, seed)

    def sample_classes(self, labels: Tensor) -> Tensor:
        """Sorted indices into this shard of this step's centres: its classes among the global
        batch's `labels`, plus random others."""
        mine = labels[(labels >= self.start) & (labels < self.end)] - self.start
        return sample_classes(torch.unique(mine), self.end - self.start, self.num_sampled, [self.seed, int(self.step), self.rank])

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        all_embeddings = gather_with_gradient(embeddings, gradient_scale=self.world_size)
        all_labels = gather_from_all_ranks(labels)
        local_labels = all_labels - self.start
        in_shard = (local_labels >= 0) & (local_labels < self.end - self.start)
        centres = self.weight
        if self.training and self.samples:
            classes = self.sample_classes(all_labels)
            self.step += 1
            centres, local_labels = self.sampled_centres(classes), torch.searchsorted(classes, local_labels)
        # Rows of this shard's classes (all sampled) get their exact column; the others' are not used.
        columns = local_labels.clamp(0, len(centres) - 1)
        cosine = self.cosine(all_embeddings, centres)
        with_margin = combined_margin_logits(cosine, columns, self.s, self.m1, self.m2, self.m3, self.easy_margin)
        logits = torch.where(in_shard[:, None], with_margin, self.s * cosine)
        return _DistributedCrossEntropy.apply(logits, torch.where(in_shard, columns, -1))

    def gather_rows(self, shard: Tensor) -> Tensor:
        """Every rank's `shard` (this head's weight or momentum, or optimizer state shaped like it) as one
        num_classes-row tensor in class order; every rank must call it."""
        return gather_from_all_ranks(shard)

    def shard_rows(self, rows: Tensor) -> Tensor:
        """This rank's rows of a num_classes-row tensor (a checkpoint's weight, momentum or optimizer state)."""
        return rows[self.start:self.end]
