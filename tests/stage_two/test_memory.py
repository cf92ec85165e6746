import pytest
import torch

from pipeline.errors import FacekdError
from pipeline.stage_two.memory import MemoryBank

TEACHER_DIM, STUDENT_DIM = 4, 3


def make_batch(size: int, first_index: int, generator: torch.Generator):
    return (
        torch.randn(size, TEACHER_DIM, generator=generator, dtype=torch.float64),
        torch.randn(size, STUDENT_DIM, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randint(0, 5, (size,), generator=generator),
        torch.arange(first_index, first_index + size),
    )


class ListRingBuffer:
    """Reference: write rows one at a time into slot (count mod capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.count, self.slots = capacity, 0, [None] * capacity

    def enqueue(self, teacher, student, labels, indices) -> None:
        for row in range(len(labels)):
            self.slots[self.count % self.capacity] = (
                teacher[row] / teacher[row].norm(),
                student[row].detach() / student[row].detach().norm(),
                int(labels[row]),
                int(indices[row]),
            )
            self.count += 1

    def valid(self) -> list:
        return self.slots[: min(self.count, self.capacity)]


def assert_bank_matches(bank: MemoryBank, reference: ListRingBuffer) -> None:
    entries = bank.filled()
    expected = reference.valid()
    assert entries.labels.tolist() == [label for _, _, label, _ in expected]
    assert entries.dataset_indices.tolist() == [index for _, _, _, index in expected]
    torch.testing.assert_close(entries.teacher, torch.stack([teacher for teacher, _, _, _ in expected]))
    torch.testing.assert_close(entries.student, torch.stack([student for _, student, _, _ in expected]))
    assert int(bank.queue_index) == reference.count % reference.capacity
    assert bool(bank.is_full) == (reference.count >= reference.capacity)


def test_enqueue_matches_list_reference_through_wraparound_and_oversized_batches():
    generator = torch.Generator().manual_seed(0)
    bank = MemoryBank(7, TEACHER_DIM, STUDENT_DIM).double()
    reference = ListRingBuffer(7)
    next_index = 0
    for size in (3, 2, 4, 1, 9, 5, 7, 0, 2):  # wraps, a batch > capacity, one == capacity, an empty one
        batch = make_batch(size, next_index, generator)
        next_index += size
        bank.enqueue(*batch)
        reference.enqueue(*batch)
        assert_bank_matches(bank, reference)
    assert not bank.filled().student.requires_grad


def test_enqueued_embeddings_are_normalised():
    bank = MemoryBank(10, TEACHER_DIM, STUDENT_DIM)
    bank.enqueue(3 * torch.ones(4, TEACHER_DIM), torch.ones(4, STUDENT_DIM), torch.zeros(4), torch.arange(4))
    entries = bank.filled()
    assert entries.teacher.shape == (4, TEACHER_DIM)
    torch.testing.assert_close(entries.teacher.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(entries.student.norm(dim=1), torch.ones(4))


def test_zero_capacity_is_no_bank():
    bank = MemoryBank(0, TEACHER_DIM, STUDENT_DIM)
    bank.enqueue(*make_batch(5, 0, torch.Generator().manual_seed(1)))
    entries = bank.filled()
    assert entries.labels.numel() == 0 and entries.teacher.shape == (0, TEACHER_DIM)


def test_negative_capacity_is_rejected():
    with pytest.raises(FacekdError, match="capacity"):
        MemoryBank(-1, TEACHER_DIM, STUDENT_DIM)


def test_state_dict_round_trip_restores_bank_and_queue_position():
    generator = torch.Generator().manual_seed(2)
    bank = MemoryBank(6, TEACHER_DIM, STUDENT_DIM)
    for start in (0, 4, 8):
        bank.enqueue(*make_batch(4, start, generator))
    restored = MemoryBank(6, TEACHER_DIM, STUDENT_DIM)
    restored.load_state_dict(bank.state_dict())
    assert set(bank.state_dict()) == {"teacher", "student", "labels", "dataset_indices", "queue_index", "is_full"}
    next_batch = make_batch(3, 12, generator)
    bank.enqueue(*next_batch)
    restored.enqueue(*next_batch)
    for original, copy in zip(bank.filled(), restored.filled()):
        assert torch.equal(original, copy)
    assert torch.equal(bank.queue_index, restored.queue_index)

