import pytest
import torch

from pipeline.errors import FacekdError
from pipeline.stage_two.losses import RPSDLoss, mine_rpsd_pairs
from pipeline.stage_two.losses.rpsd import BankSimilarity
from pipeline.stage_two.memory import MemoryBank
from tests.stage_two.losses import references

# Golden values: computed once with references.rpsd (per-anchor Python loop over references,
# negatives sorted by max(T, S)) on the inputs of `batch()` and `bank()`, checked equal to
# RPSDLoss, then hard-coded. Keys: (variant, k_neg, with_bank).
GOLDEN = {
    ("mse", 2, True): 0.43197828879325983,
    ("kl", 2, True): 3.858075384338614,
    ("mse", None, True): 0.42157280940741976,
    ("kl", None, False): 4.118812926488136,
    ("mse", 2, False): 0.4590425304687088,
}
TEMPERATURE = 0.1
LABELS = torch.tensor([0, 0, 1, 1, 2, 0])
DATASET_INDICES = torch.arange(10, 16)


def batch():
    """Student dim 5, teacher dim 4 (RPSD compares similarities, dimensions may differ)."""
    torch.manual_seed(0)
    return torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)


def bank() -> MemoryBank:
    """Five past samples; two share a dataset index with batch samples 1 and 3 (same image)."""
    torch.manual_seed(1)
    memory = MemoryBank(8, teacher_dim=4, student_dim=5).double()
    memory.enqueue(
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, 5, dtype=torch.float64),
        torch.tensor([1, 0, 3, 2, 0]),
        torch.tensor([11, 20, 21, 13, 22]),
    )
    return memory


def reference_value(student, teacher, variant, k_neg, with_bank):
    entries = bank().filled() if with_bank else None
    return references.rpsd(student, teacher, LABELS, DATASET_INDICES, entries, k_neg, variant, TEMPERATURE)


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_values(case):
    variant, k_neg, with_bank = case
    student, teacher = batch()
    memory = bank().filled() if with_bank else None
    loss = RPSDLoss(k_neg=k_neg, variant=variant, temperature=TEMPERATURE)
    assert loss(student, teacher, LABELS, DATASET_INDICES, memory).item() == pytest.approx(GOLDEN[case], rel=1e-10)
    assert reference_value(student, teacher, *case) == pytest.approx(GOLDEN[case], rel=1e-10)


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_gradcheck_with_bank_and_mining(variant):
    student, teacher = batch()
    memory = bank().filled()
    loss = RPSDLoss(k_neg=2, variant=variant, temperature=TEMPERATURE)
    # fast_mode checks a random projection of the Jacobian: one backward instead of 30.
    assert torch.autograd.gradcheck(
        lambda s: loss(s, teacher, LABELS, DATASET_INDICES, memory), (student.requires_grad_(),), fast_mode=True
    )


def test_empty_bank_without_mining_is_plain_in_batch_pairwise_mse():
    student, teacher = batch()
    squared_errors = [
        (references.cosine(student[i], student[j]) - references.cosine(teacher[i], teacher[j])) ** 2
        for i in range(6) for j in range(6) if i != j
    ]
    expected = sum(squared_errors) / len(squared_errors)
    empty = MemoryBank(0, 4, 5).double().filled()
    for k_neg in (None, 0, -1):
        loss = RPSDLoss(k_neg=k_neg)
        assert loss(student, teacher, LABELS, DATASET_INDICES, empty).item() == pytest.approx(expected, rel=1e-12)
        assert loss(student, teacher, LABELS, DATASET_INDICES, None).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_bank_entries_of_the_anchors_own_image_are_ignored(variant):
    student, teacher = batch()
    loss = RPSDLoss(k_neg=2, variant=variant)
    for stored_index, expect_zero in ((10, True), (99, False)):  # 10 is the anchor's own image
        memory = MemoryBank(2, 4, 5).double()
        memory.enqueue(teacher[1:3], student[1:3], LABELS[1:3], torch.tensor([stored_index] * 2))
        value = loss(student[:1], teacher[:1], LABELS[:1], DATASET_INDICES[:1], memory.filled()).item()
        assert (value == 0.0) == expect_zero


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_student_matching_teacher_gives_zero(variant):
    _, teacher = batch()
    memory = MemoryBank(8, 4, 4).double()
    memory.enqueue(teacher.flip(0), teacher.flip(0), LABELS, DATASET_INDICES + 100)
    loss = RPSDLoss(k_neg=3, variant=variant)(2.0 * teacher, teacher, LABELS, DATASET_INDICES, memory.filled())
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def brute_force_pairs(teacher_similarity, student_similarity, labels, reference_labels, valid, k_neg) -> set:
    pairs = set()
    for i in range(len(labels)):
        negatives = []
        for j in range(len(reference_labels)):
            if not valid[i, j]:
                continue
            if labels[i] == reference_labels[j]:
                pairs.add((i, j))
            else:
                negatives.append((max(float(teacher_similarity[i, j]), float(student_similarity[i, j])), j))
        pairs.update((i, j) for _, j in sorted(negatives, reverse=True)[:k_neg])
    return pairs


@pytest.mark.parametrize("k_neg", [1, 3, 40])  # 40 > every anchor's negatives: all are kept
def test_miner_matches_brute_force(k_neg):
    generator = torch.Generator().manual_seed(3)
    teacher_similarity = torch.rand(7, 15, generator=generator) * 2 - 1
    student_similarity = torch.rand(7, 15, generator=generator) * 2 - 1
    labels = torch.randint(0, 3, (7,), generator=generator)
    reference_labels = torch.randint(0, 3, (15,), generator=generator)
    valid = torch.rand(7, 15, generator=generator) < 0.8
    anchors, references_ = mine_rpsd_pairs(
        teacher_similarity, student_similarity, labels, reference_labels, valid, k_neg
    )
    mined = list(zip(anchors.tolist(), references_.tolist()))
    assert len(mined) == len(set(mined))
    assert set(mined) == brute_force_pairs(
        teacher_similarity, student_similarity, labels, reference_labels, valid, k_neg
    )


def test_miner_requires_a_positive_k_neg():
    with pytest.raises(FacekdError, match="k_neg"):
        similarity, labels, valid = torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 2, dtype=torch.bool)
        mine_rpsd_pairs(similarity, similarity, labels, labels, valid, k_neg=0)


def test_single_sample_without_references_gives_zero_with_gradient():
    student, teacher = batch()
    student = student[:1].requires_grad_()
    for variant in ("mse", "kl"):
        loss = RPSDLoss(variant=variant)(student, teacher[:1], LABELS[:1], DATASET_INDICES[:1])
        loss.backward()
        assert loss.item() == 0.0


@pytest.mark.parametrize("arguments", [{"variant": "cosine"}, {"temperature": 0.0}])
def test_rejects_bad_arguments(arguments):
    with pytest.raises(FacekdError, match="RPSD"):
        RPSDLoss(**arguments)


@pytest.mark.parametrize("kept_per_row", [3, 200])  # sparse (a sparse product) and dense (the plain one)
def test_bank_similarity_gradient_equals_the_dense_products(kept_per_row):
    torch.manual_seed(0)
    anchors = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(200, 16, dtype=torch.float64)
    upstream = torch.zeros(8, 200, dtype=torch.float64)
    upstream.scatter_(1, torch.rand(8, 200).topk(kept_per_row, dim=1).indices, torch.randn(8, kept_per_row, dtype=torch.float64))
    similarity = BankSimilarity.apply(anchors, bank)
    assert torch.equal(similarity, anchors @ bank.T)
    (gradient,) = torch.autograd.grad(similarity, anchors, upstream)
    torch.testing.assert_close(gradient, upstream @ bank, rtol=1e-12, atol=1e-12)
