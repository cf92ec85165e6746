"""Mapping student embeddings to the teacher's dimension for the per-sample KD terms.

The embedding losses that compare s_i with t_i directly (ILED, Raw L2, FC, AdaArcDistill)
need one space; relation losses (RPSD, RKD, SP) compare similarities and need none.
"""
from __future__ import annotations

from torch import nn


def embedding_projector(student_dim: int, teacher_dim: int) -> nn.Module:
    """A trainable linear map student_dim -> teacher_dim, or identity when they are equal
    (so equal dimensions add no parameters and distil the embedding itself)."""
    if student_dim == teacher_dim:
        return nn.Identity()
    return nn.Linear(student_dim, teacher_dim)
