"""The FIFO memory bank that gives RPSD references beyond the current batch.

As in XBM / pytorch-metric-learning's CrossBatchMemory, past batches are kept in a ring buffer.
Everything lives in `register_buffer`s (entries, the queue index and the full flag), so the bank
moves with `.to(device)` and is saved and restored by `state_dict()` with the rest of the run.
Teacher entries are exact (the teacher is frozen); student entries are detached and grow stale
as the student trains, which is why the bank is FIFO and bounded.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import FacekdError


class MemoryEntries(NamedTuple):
    """The valid part of a memory bank, row-aligned."""

    teacher: Tensor  # K x teacher_dim, L2-normalised
    student: Tensor  # K x student_dim, L2-normalised, detached
    labels: Tensor  # K, int64 identity labels
    dataset_indices: Tensor  # K, int64 index of each sample in the training set


class MemoryBank(nn.Module):
    """Ring buffer of (t̂, ŝ detached, label, dataset index) of the last `capacity` samples.

    `capacity` 0 means no bank: `enqueue` keeps nothing and `filled()` is empty.
    """

    def __init__(self, capacity: int, teacher_dim: int, student_dim: int) -> None:
        super().__init__()
        if capacity < 0:
            raise FacekdError(f"memory bank capacity must be >= 0 (0 = no bank), got {capacity}")
        self.capacity = capacity
        self.register_buffer("teacher", torch.zeros(capacity, teacher_dim))
        self.register_buffer("student", torch.zeros(capacity, student_dim))
        self.register_buffer("labels", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("dataset_indices", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("queue_index", torch.zeros((), dtype=torch.int64))
        self.register_buffer("is_full", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def enqueue(self, teacher: Tensor, student: Tensor, labels: Tensor, dataset_indices: Tensor) -> None:
        """Append a batch row by row in FIFO order, overwriting the oldest entries (of a batch
        larger than the bank only its last `capacity` rows survive). Embeddings are
        L2-normalised and detached here."""
        if self.capacity == 0:
            return
        batch_size = labels.shape[0]
        kept = min(batch_size, self.capacity)
        rows = (
            F.normalize(teacher[-kept:].detach(), dim=1),
            F.normalize(student[-kept:].detach(), dim=1),
            labels[-kept:],
            dataset_indices[-kept:],
        )
        start = int(self.queue_index)
        first_slot = (start + batch_size - kept) % self.capacity
        slots = (first_slot + torch.arange(kept, device=self.labels.device)) % self.capacity
        for buffer, row in zip((self.teacher, self.student, self.labels, self.dataset_indices), rows):
            buffer[slots] = row.to(device=buffer.device, dtype=buffer.dtype)
        self.is_full |= start + batch_size >= self.capacity
        self.queue_index.fill_((start + batch_size) % self.capacity)

    def filled(self) -> MemoryEntries:
        """The entries written so far (all of them once the bank has wrapped around)."""
        size = self.capacity if bool(self.is_full) else int(self.queue_index)
        return MemoryEntries(
            self.teacher[:size], self.student[:size], self.labels[:size], self.dataset_indices[:size]
        )

