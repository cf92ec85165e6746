"""RPSD: relation-based pairwise similarity distillation with a memory bank and pair mining.

Reconstruction of the relational term of "Unified Knowledge Distillation Framework: Fine-Grained
Alignment and Geometric Relationship Preservation for Deep Face Recognition" (arXiv 2508.11376,
IJCB 2025); see `shared/method.md`. The student copies the teacher's cosine similarities
T_ij = t̂_i·t̂_j between an anchor and its references. References are the other in-batch
samples (live student embeddings, so the gradient reaches both ends of the pair) and the memory
bank entries of other images (stored student embeddings, as in XBM). Per anchor, all positives
and only the k_neg most confusable negatives are kept: most negative pairs are easy and would
drown the informative ones.

Roles follow pytorch-metric-learning: `mine_rpsd_pairs` is a no-grad miner returning index
tuples; `RPSDLoss` builds the similarity matrices, calls the miner and reduces the pairs.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import FacekdError
from pipeline.stage_two.memory import MemoryEntries

VARIANTS = ("mse", "kl")
# Below this share of non-zero entries a sparse product beats the dense one (measured on CPU:
# 70 of 4096 per row, 4x faster); the no-mining ablation's gradient is dense.
SPARSE_GRADIENT_DENSITY = 0.125


class BankSimilarity(torch.autograd.Function):
    """anchors @ bank.T, whose backward exploits that RPSD's gradient reaches few bank entries.

    Only the mined pairs (positives and k_neg negatives of an anchor's R references) carry a
    gradient, so grad @ bank is done as a sparse product where the gradient is sparse: the
    same values up to float rounding, without the dense B x K x d product. The bank (detached
    student embeddings) takes no gradient.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, anchors: Tensor, bank: Tensor) -> Tensor:
        ctx.save_for_backward(bank)
        return anchors @ bank.T

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (bank,) = ctx.saved_tensors
        if grad.count_nonzero() > SPARSE_GRADIENT_DENSITY * grad.numel():
            return grad @ bank, None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return grad.to_sparse_csr() @ bank, None


@torch.no_grad()
def mine_rpsd_pairs(
    teacher_similarity: Tensor,
    student_similarity: Tensor,
    labels: Tensor,
    reference_labels: Tensor,
    valid: Tensor,
    k_neg: int,
) -> tuple[Tensor, Tensor]:
    """(anchor indices, reference indices) of the mined pairs: positives first, then negatives.

    Among the `valid` (B x R) pairs, an anchor keeps every positive (same label) and the
    `k_neg` negatives with the largest max(T_ij, S_ij): a negative counts as hard if either
    network finds it similar. Fewer negatives than `k_neg` are all kept.
    """
    if k_neg < 1:
        raise FacekdError(f"RPSD k_neg must be >= 1 to mine, got {k_neg}")
    same_identity = labels[:, None] == reference_labels[None, :]
    hardness = torch.maximum(teacher_similarity, student_similarity)
    hardness.masked_fill_(same_identity | ~valid, -torch.inf)
    top = hardness.topk(min(k_neg, hardness.shape[1]), dim=1)
    is_negative = top.values > -torch.inf
    anchors = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(top.indices)
    positive_anchors, positive_references = (valid & same_identity).nonzero(as_tuple=True)
    return (
        torch.cat([positive_anchors, anchors[is_negative]]),
        torch.cat([positive_references, top.indices[is_negative]]),
    )


class RPSDLoss(nn.Module):
    """Pairwise similarity distillation over in-batch and memory-bank references.

    variant "mse": mean over mined pairs of (S_ij − T_ij)².
    variant "kl": per anchor, softmax over its mined references of T/τ and S/τ, KL(T || S),
    averaged over anchors with at least one reference. One `temperature` τ serves teacher
    and student (so S = T gives exactly zero); smaller τ sharpens the distributions towards
    the most similar references. No τ² rescaling: λ_R sets the scale.
    `k_neg` None or <= 0 disables mining (every valid pair counts). With an empty bank and no
    mining, "mse" is the plain in-batch mean over i != j of (ŝ_i·ŝ_j − t̂_i·t̂_j)².
    """

    def __init__(self, k_neg: int | None = 64, variant: str = "mse", temperature: float = 0.1) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise FacekdError(f"RPSD variant must be one of {list(VARIANTS)}, got {variant!r}")
        if temperature <= 0:
            raise FacekdError(f"RPSD temperature must be > 0, got {temperature}")
        self.k_neg = k_neg if k_neg is not None and k_neg > 0 else None
        self.variant, self.temperature = variant, temperature

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        labels: Tensor,
        dataset_indices: Tensor,
        memory: MemoryEntries | None = None,
    ) -> Tensor:
        """`student` B x d, `teacher` B x D (raw or normalised), `dataset_indices` B (to skip
        bank entries of the anchor's own image); `memory` from `MemoryBank.filled()`."""
        student_similarity, teacher_similarity, reference_labels, valid = self._similarities(
            student, teacher, labels, dataset_indices, memory
        )
        if self.k_neg is None:
            anchors, references = valid.nonzero(as_tuple=True)
        else:
            anchors, references = mine_rpsd_pairs(
                teacher_similarity, student_similarity, labels, reference_labels, valid, self.k_neg
            )
        if self.variant == "mse":
            # Only the pairs' entries (about 2 % of B x R with the default bank and k_neg): no
            # elementwise pass over the whole matrix, forward or backward.
            errors = student_similarity[anchors, references] - teacher_similarity[anchors, references]
            return errors.pow(2).sum() / max(len(anchors), 1)
        pairs = torch.zeros_like(valid)
        pairs[anchors, references] = True
        return self._kl(teacher_similarity, student_similarity, pairs)

    @staticmethod
    def _similarities(
        student: Tensor, teacher: Tensor, labels: Tensor, dataset_indices: Tensor, memory: MemoryEntries | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """S and T (B x R, in-batch references first, then the bank), reference labels and
        the B x R mask of valid references (not the anchor itself, not its own image)."""
        student_anchors = F.normalize(student, dim=1)
        teacher_anchors = F.normalize(teacher, dim=1)
        student_similarity = student_anchors @ student_anchors.T
        with torch.no_grad():
            teacher_similarity = teacher_anchors @ teacher_anchors.T
        valid = ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        if memory is None or memory.labels.numel() == 0:
            return student_similarity, teacher_similarity, labels, valid
        bank_student_similarity = BankSimilarity.apply(student_anchors, memory.student.to(student_anchors.dtype))
        with torch.no_grad():
            bank_teacher_similarity = teacher_anchors @ memory.teacher.to(teacher_anchors.dtype).T
        return (
            torch.cat([student_similarity, bank_student_similarity], dim=1),
            torch.cat([teacher_similarity, bank_teacher_similarity], dim=1),
            torch.cat([labels, memory.labels]),
            torch.cat([valid, dataset_indices[:, None] != memory.dataset_indices[None, :]], dim=1),
        )

    def _kl(self, teacher_similarity: Tensor, student_similarity: Tensor, pairs: Tensor) -> Tensor:
        anchors = pairs.any(dim=1)
        pairs = pairs[anchors]
        teacher_log_p = F.log_softmax(
            (teacher_similarity[anchors] / self.temperature).masked_fill(~pairs, -torch.inf), dim=1
        )
        student_log_p = F.log_softmax(
            (student_similarity[anchors] / self.temperature).masked_fill(~pairs, -torch.inf), dim=1
        )
        terms = torch.where(pairs, teacher_log_p.exp() * (teacher_log_p - student_log_p), 0.0)
        return terms.sum() / anchors.sum().clamp_min(1)
