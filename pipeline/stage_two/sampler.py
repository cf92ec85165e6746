"""Batch samplers for training: plain random batches, or pair-aware batches.

Both yield *global* batches of (dataset index, flip) items and hand each DDP rank its slice,
so one seed gives the same samples whatever the world size. Every decision is a function of
(seed, epoch), which is what lets a resumed run repeat an interrupted epoch exactly.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.errors import FacekdError

Item = tuple[int, bool]


class RandomBatchSampler:
    """A fresh permutation of the usable samples every epoch, cut into global batches."""

    def __init__(
        self, usable: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, flip: bool = True
    ) -> None:
        if batch_size % world_size:
            raise FacekdError(f"batch size {batch_size} is not divisible by the world size {world_size}")
        if batch_size // world_size < 2:
            raise FacekdError(
                f"batch size {batch_size} over {world_size} ranks is {batch_size // world_size} sample per rank; "
                "BatchNorm needs at least 2 per rank per step"
            )
        if len(usable) < batch_size:
            raise FacekdError(f"the training set has {len(usable)} usable samples; batch size {batch_size} needs more")
        self.usable = np.asarray(usable, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size, self.flip = batch_size, seed, rank, world_size, flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.usable) // self.batch_size

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def global_batches(self) -> Iterator[np.ndarray]:
        rng = self._rng()
        order = self.usable[rng.permutation(len(self.usable))]
        for step in range(len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[Item]]:
        flips_rng = np.random.default_rng([self.seed, self.epoch, 1])
        per_rank = self.batch_size // self.world_size
        for batch in self.global_batches():
            flips = flips_rng.random(len(batch)) < 0.5 if self.flip else np.zeros(len(batch), dtype=bool)
            mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            yield list(zip(batch[mine].tolist(), flips[mine].tolist()))


class PairBatchSampler(RandomBatchSampler):
    """Half of each batch random anchors, half one mined partner of each anchor.

    `partner_offsets` (N + 1) and `partners` are the mined pair table in CSR form: the
    partners of anchor a are partners[offsets[a]:offsets[a+1]] (hard negatives and hard
    positives). An anchor without partners gets a random usable sample instead. Anchors and
    partners are interleaved (a0, p0, a1, p1, ...) so every rank's slice holds whole pairs.
    """

    def __init__(
        self, usable: np.ndarray, partner_offsets: np.ndarray, partners: np.ndarray, batch_size: int, seed: int,
        rank: int = 0, world_size: int = 1, flip: bool = True,
    ) -> None:
        super().__init__(usable, batch_size, seed, rank, world_size, flip)
        if batch_size % (2 * world_size):
            raise FacekdError(f"pair batches need a batch size divisible by 2 x world size; got {batch_size}")
        # Held as given (no copy when already int64): the table can hold billions of partners.
        self.partner_offsets = np.asarray(partner_offsets, dtype=np.int64)
        self.partners = np.asarray(partners, dtype=np.int64)

    def global_batches(self) -> Iterator[np.ndarray]:
        rng = self._rng()
        anchors_per_batch = self.batch_size // 2
        # An epoch has as many samples as a random epoch: half its anchors, each with a partner.
        anchors = self.usable[rng.permutation(len(self.usable))]
        for step in range(len(self)):
            batch_anchors = anchors[step * anchors_per_batch : (step + 1) * anchors_per_batch]
            # Only this batch's offsets are read: a per-step diff over all N offsets made an epoch O(N^2).
            starts = self.partner_offsets[batch_anchors]
            counts = self.partner_offsets[batch_anchors + 1] - starts
            picks = starts + (rng.random(len(batch_anchors)) * counts).astype(np.int64)
            batch_partners = self.usable[rng.integers(0, len(self.usable), len(batch_anchors))]
            has_partners = counts > 0
            batch_partners[has_partners] = self.partners[picks[has_partners]]
            yield np.stack([batch_anchors, batch_partners], axis=1).reshape(-1)
