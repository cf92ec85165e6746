import numpy as np
import pytest

from pipeline.errors import FacekdError
from pipeline.sampler import PairBatchSampler, RandomBatchSampler


def _indices(batches):
    return [[index for index, _flip in batch] for batch in batches]


def test_random_batches_are_seeded_per_epoch_and_cover_distinct_samples() -> None:
    usable = np.arange(0, 100, 2)  # only even samples may be used
    sampler = RandomBatchSampler(usable, batch_size=8, seed=3)
    assert len(sampler) == 6
    first = list(sampler)
    assert all(len(batch) == 8 for batch in first)
    flat = [i for batch in _indices(first) for i in batch]
    assert len(set(flat)) == 48 and set(flat) <= set(usable.tolist())
    assert list(RandomBatchSampler(usable, 8, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    flips = [flip for batch in first for _i, flip in batch]
    assert 0 < sum(flips) < len(flips)
    assert not any(flip for batch in RandomBatchSampler(usable, 8, seed=3, flip=False) for _i, flip in batch)


def test_ranks_split_the_same_global_batches() -> None:
    usable = np.arange(64)
    whole = list(RandomBatchSampler(usable, 16, seed=1))
    rank0 = list(RandomBatchSampler(usable, 16, seed=1, rank=0, world_size=2))
    rank1 = list(RandomBatchSampler(usable, 16, seed=1, rank=1, world_size=2))
    assert [a + b for a, b in zip(rank0, rank1)] == whole


def test_pair_batches_hold_anchors_next_to_their_mined_partners() -> None:
    usable = np.arange(40)
    # anchor a's partners: a+1 and a+2 (mod 40) for even anchors; odd anchors have none
    partners_of = {a: [(a + 1) % 40, (a + 2) % 40] if a % 2 == 0 else [] for a in range(40)}
    offsets = np.cumsum([0] + [len(partners_of[a]) for a in range(40)])
    partners = np.concatenate([partners_of[a] for a in range(40) if partners_of[a]])
    sampler = PairBatchSampler(usable, offsets, partners, batch_size=8, seed=0)
    batches = _indices(sampler)
    assert len(batches) == 5
    anchors = [batch[0::2] for batch in batches]
    assert len({a for group in anchors for a in group}) == 20  # distinct anchors
    for batch in batches:
        for anchor, partner in zip(batch[0::2], batch[1::2]):
            if partners_of[anchor]:
                assert partner in partners_of[anchor]
            else:
                assert 0 <= partner < 40
    # every mined partner of an anchor gets picked sometimes
    picked = {a: set() for a in range(0, 40, 2)}
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in _indices(sampler):
            for anchor, partner in zip(batch[0::2], batch[1::2]):
                if anchor % 2 == 0:
                    picked[anchor].add(partner)
    assert all(picked[a] == set(partners_of[a]) for a in picked)


def test_bad_batch_sizes() -> None:
    with pytest.raises(FacekdError, match="batch size 10 is not divisible by the world size 4"):
        RandomBatchSampler(np.arange(100), 10, 0, world_size=4)
    with pytest.raises(FacekdError, match="has 5 usable samples; batch size 8 needs more"):
        RandomBatchSampler(np.arange(5), 8, 0)
    with pytest.raises(FacekdError, match="divisible by 2 x world size"):
        PairBatchSampler(np.arange(100), np.zeros(101, int), np.zeros(0, int), 6, 0, world_size=2)
