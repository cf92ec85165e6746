import numpy as np
import pytest

from pipeline.errors import FacekdError
from pipeline.stage_two.sampler import PairBatchSampler, RandomBatchSampler


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
    with pytest.raises(FacekdError, match="batch size 4 over 4 ranks is 1 sample per rank; BatchNorm needs at least 2"):
        RandomBatchSampler(np.arange(100), 4, 0, world_size=4)
    with pytest.raises(FacekdError, match="divisible by 2 x world size"):
        PairBatchSampler(np.arange(100), np.zeros(101, int), np.zeros(0, int), 6, 0, world_size=2)


def test_the_last_partial_batch_is_dropped() -> None:
    # 9 samples in batches of 4: a ninth sample alone would be a batch BatchNorm cannot train on.
    pairs = PairBatchSampler(np.arange(9), np.zeros(10, int), np.zeros(0, int), 4, 0)
    for sampler in (RandomBatchSampler(np.arange(9), 4, 0), pairs):
        assert len(sampler) == 2 and [len(batch) for batch in sampler] == [4, 4]


def _batches_of_the_first_implementation(
    usable: np.ndarray, offsets: np.ndarray, partners: np.ndarray, batch_size: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """PairBatchSampler.global_batches as first written (a diff over all offsets at every step):
    the reference the faster version must reproduce batch for batch."""
    rng = np.random.default_rng([seed, epoch])
    padded_partners = np.append(partners, -1)
    anchors_per_batch = batch_size // 2
    anchors = usable[rng.permutation(len(usable))]
    batches = []
    for step in range(len(usable) // batch_size):
        batch_anchors = anchors[step * anchors_per_batch : (step + 1) * anchors_per_batch]
        starts, counts = offsets[batch_anchors], np.diff(offsets)[batch_anchors]
        picks = starts + (rng.random(len(batch_anchors)) * counts).astype(np.int64)
        random_partners = usable[rng.integers(0, len(usable), len(batch_anchors))]
        batch_partners = np.where(counts > 0, padded_partners[picks], random_partners)
        batches.append(np.stack([batch_anchors, batch_partners], axis=1).reshape(-1))
    return batches


@pytest.mark.parametrize("seed", [0, 7])
def test_pair_batches_equal_the_first_implementations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_samples = 500
    counts = rng.integers(0, 6, num_samples)
    counts[rng.random(num_samples) < 0.3] = 0  # many anchors without partners
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    partners = rng.integers(0, num_samples, offsets[-1]).astype(np.int64)
    usable = np.flatnonzero(rng.random(num_samples) < 0.9)
    sampler = PairBatchSampler(usable, offsets, partners, batch_size=16, seed=seed)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        new = list(sampler.global_batches())
        old = _batches_of_the_first_implementation(usable, offsets, partners, 16, seed, epoch)
        assert len(new) == len(old) == len(usable) // 16
        for new_batch, old_batch in zip(new, old):
            np.testing.assert_array_equal(new_batch, old_batch)


def test_pair_sampler_keeps_the_pair_table_without_copying() -> None:
    offsets = np.array([0, 2, 2, 3], dtype=np.int64)
    partners = np.array([1, 2, 0], dtype=np.int64)
    sampler = PairBatchSampler(np.arange(3), offsets, partners, batch_size=2, seed=0)
    assert sampler.partners is partners and sampler.partner_offsets is offsets
