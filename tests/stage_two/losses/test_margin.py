import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import FacekdError
from pipeline.stage_two.losses import CombinedMarginHead, PartialMarginHead, SampledCentresHead, margin_head
from tests.stage_two.losses import references

# Golden values: computed once with references.margin_cross_entropy (per-sample loop, θ from
# math.acos) on the inputs of `inputs()`, checked equal to CombinedMarginHead, then hard-coded.
GOLDEN = {
    # (m1, m2, m3, easy_margin): loss
    (1.0, 0.5, 0.0, False): 58.346143097288056,  # ArcFace
    (1.0, 0.0, 0.35, False): 56.43021922206361,  # CosFace
    (1.2, 0.2, 0.1, False): 61.064967524792074,  # all three margins combined
    (1.0, 0.5, 0.0, True): 49.12635135352167,  # ArcFace, easy margin
}
LABELS = torch.tensor([0, 1, 2, 3, 0, 2])


def inputs():
    """Embeddings, class centres; the last sample points away from its centre, so its
    θ + 0.5 passes π and the ArcFace fall-back branch is exercised."""
    torch.manual_seed(0)
    embeddings = torch.randn(6, 5, dtype=torch.float64)
    centres = torch.randn(4, 5, dtype=torch.float64)
    embeddings[5] = -centres[2] + 0.05 * torch.randn(5, dtype=torch.float64)
    return embeddings, centres


def head_with(centres, m1, m2, m3, easy_margin):
    head = CombinedMarginHead(5, 4, s=64.0, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin).double()
    with torch.no_grad():
        head.weight.copy_(centres)
    return head


def test_inputs_reach_the_fallback_branch():
    embeddings, centres = inputs()
    assert F.cosine_similarity(embeddings[5], centres[2], dim=0) < math.cos(math.pi - 0.5)


@pytest.mark.parametrize("margins", list(GOLDEN))
def test_golden_values(margins):
    embeddings, centres = inputs()
    loss = head_with(centres, *margins)(embeddings, LABELS)
    assert loss.item() == pytest.approx(GOLDEN[margins], rel=1e-10)
    expected = references.margin_cross_entropy(embeddings, centres, LABELS, 64.0, *margins)
    assert expected == pytest.approx(GOLDEN[margins], rel=1e-10)


@pytest.mark.parametrize("margins", list(GOLDEN))
def test_gradcheck_embeddings_and_centres(margins):
    embeddings, centres = inputs()
    head = head_with(centres, *margins)

    def loss(embeddings, weight):
        return torch.func.functional_call(head, {"weight": weight}, (embeddings, LABELS))

    assert torch.autograd.gradcheck(loss, (embeddings.requires_grad_(), centres.clone().requires_grad_()))


def test_cosface_subtracts_exactly_m3_from_the_target_cosine():
    embeddings, centres = inputs()
    head = head_with(centres, 1.0, 0.0, 0.35, False)
    expected = 64.0 * (head.cosine(embeddings) - 0.35 * F.one_hot(LABELS, 4).double())
    assert torch.equal(head.margin_logits(embeddings, LABELS), expected)


def test_margin_head_kinds():
    arcface = margin_head("arcface", 5, 4)
    cosface = margin_head("cosface", 5, 4, s=30.0, margin=0.4)
    assert (arcface.s, arcface.m1, arcface.m2, arcface.m3) == (64.0, 1.0, 0.5, 0.0)
    assert (cosface.s, cosface.m1, cosface.m2, cosface.m3) == (30.0, 1.0, 0.0, 0.4)
    assert arcface.weight.shape == (4, 5)
    with pytest.raises(FacekdError, match="sphereface"):
        margin_head("sphereface", 5, 4)


def _loss_and_gradients(head, embeddings, labels):
    """Loss, the embeddings' gradient and the centres' (for a sampling head: those of the step's
    centres, in class order, zero for centres it did not sample)."""
    embeddings = embeddings.clone().requires_grad_()
    loss = head(embeddings, labels)
    loss.backward()
    if isinstance(head, SampledCentresHead) and head.sampled is not None:
        assert head.weight.grad is None, "the sampled head made a C x D gradient"
        rows, centres = head.sampled
        centre_grad = torch.zeros_like(head.weight)
        centre_grad[rows] = centres.grad
        return loss.detach(), embeddings.grad, centre_grad
    return loss.detach(), embeddings.grad, head.weight.grad


def test_partial_head_at_rate_one_is_the_full_head():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(16, 8), torch.randint(0, 40, (16,))
    full = margin_head("arcface", 8, 40)
    partial = PartialMarginHead(8, 40, sample_rate=1.0, s=64.0, m2=0.5)
    with torch.no_grad():
        partial.weight.copy_(full.weight)
    assert margin_head("arcface", 8, 40, sample_rate=1.0).__class__ is CombinedMarginHead
    for expected, got in zip(_loss_and_gradients(full, embeddings, labels), _loss_and_gradients(partial, embeddings, labels)):
        assert torch.equal(expected, got)


def test_partial_head_that_samples_every_class_equals_the_full_head():
    """When the batch's own classes fill the sample, the sampled softmax runs over all centres."""
    torch.manual_seed(0)
    embeddings, labels = torch.randn(12, 8), torch.arange(12) % 6
    full = margin_head("cosface", 8, 6)
    partial = margin_head("cosface", 8, 6, sample_rate=0.5)
    with torch.no_grad():
        partial.weight.copy_(full.weight)
    assert torch.equal(partial.sample_classes(labels), torch.arange(6))
    for expected, got in zip(_loss_and_gradients(full, embeddings, labels), _loss_and_gradients(partial, embeddings, labels)):
        assert torch.equal(expected, got)


def test_partial_head_is_the_full_head_over_its_sampled_centres():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 100, (16,))
    partial = margin_head("arcface", 8, 100, sample_rate=0.3, seed=5).double()
    classes = partial.sample_classes(labels)
    assert len(classes) == 30 and torch.equal(classes, classes.sort().values)
    assert set(labels.tolist()) <= set(classes.tolist())
    subset = margin_head("arcface", 8, 30).double()
    with torch.no_grad():
        subset.weight.copy_(partial.weight[classes])
    loss, embedding_grad, weight_grad = _loss_and_gradients(partial, embeddings, labels)
    expected_loss, expected_embedding_grad, expected_subset_grad = _loss_and_gradients(
        subset, embeddings, torch.searchsorted(classes, labels)
    )
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    torch.testing.assert_close(embedding_grad, expected_embedding_grad)
    torch.testing.assert_close(weight_grad[classes], expected_subset_grad)
    unsampled = torch.ones(100, dtype=torch.bool)
    unsampled[classes] = False
    assert torch.all(weight_grad[unsampled] == 0)
    partial.eval()  # evaluation uses every centre
    every_centre = F.cross_entropy(partial.margin_logits(embeddings, labels), labels)
    assert partial(embeddings, labels).item() == pytest.approx(every_centre.item(), rel=1e-12)


def _sgd_steps(head, embeddings, labels, steps=3, lr=0.5, momentum=0.9, weight_decay=0.01):
    """`steps` training steps of `head` alone: torch SGD for its parameters, then the sampled centres' update."""
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        head(embeddings, labels).backward()
        optimizer.step()
        if isinstance(head, SampledCentresHead):
            head.update_sampled(lr, momentum, weight_decay)


def test_partial_head_that_samples_every_class_trains_as_the_full_head():
    """Momentum and weight decay of the sampled centres follow torch's SGD: when every step samples
    every class, the weights after several steps are the full head's under SGD."""
    torch.manual_seed(0)
    embeddings, labels = torch.randn(12, 8, dtype=torch.float64), torch.arange(12) % 6
    full = margin_head("cosface", 8, 6).double()
    partial = margin_head("cosface", 8, 6, sample_rate=0.5).double()
    with torch.no_grad():
        partial.weight.copy_(full.weight)
    _sgd_steps(full, embeddings, labels)
    _sgd_steps(partial, embeddings, labels)
    torch.testing.assert_close(partial.weight, full.weight, rtol=1e-12, atol=1e-15)
    assert not torch.equal(partial.momentum, torch.zeros_like(partial.momentum))


def test_partial_head_updates_only_the_sampled_centres():
    """A step changes the sampled centres and their momentum by one SGD step and leaves the others
    as they were: the step costs the sample, not all C centres."""
    torch.manual_seed(0)
    embeddings, labels = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 100, (16,))
    partial = margin_head("arcface", 8, 100, sample_rate=0.3, seed=5).double()
    with torch.no_grad():
        partial.momentum.normal_()
    before, momentum_before = partial.weight.detach().clone(), partial.momentum.clone()
    classes = partial.sample_classes(labels)
    _, _, centre_grad = _loss_and_gradients(partial, embeddings, labels)
    partial.update_sampled(lr=0.5, momentum=0.9, weight_decay=0.01)
    assert partial.sampled is None
    expected_momentum = 0.9 * momentum_before[classes] + centre_grad[classes] + 0.01 * before[classes]
    torch.testing.assert_close(partial.momentum[classes], expected_momentum)
    torch.testing.assert_close(partial.weight[classes], before[classes] - 0.5 * expected_momentum)
    unsampled = torch.ones(100, dtype=torch.bool)
    unsampled[classes] = False
    assert torch.equal(partial.weight[unsampled], before[unsampled])
    assert torch.equal(partial.momentum[unsampled], momentum_before[unsampled])


def test_partial_head_draws_are_seeded_and_resume_from_the_state_dict():
    labels = torch.tensor([1, 2, 3])
    first, second, other_seed = (margin_head("cosface", 4, 1000, sample_rate=0.1, seed=seed) for seed in (0, 0, 1))
    embeddings = torch.randn(3, 4)
    draws = []
    for _ in range(3):
        draws.append(first.sample_classes(labels))
        first(embeddings, labels)  # a training step advances the draw
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(second.sample_classes(labels), draws[0])
    assert not torch.equal(other_seed.sample_classes(labels), draws[0])
    second.load_state_dict(first.state_dict())  # what a resumed run restores from its checkpoint
    assert torch.equal(second.sample_classes(labels), first.sample_classes(labels))
    assert int(second.step) == 3


def test_partial_head_rejects_rates_outside_zero_to_one():
    for rate in (0.0, 1.5):
        with pytest.raises(FacekdError, match=f"margin sample rate is {rate}; expected a fraction in"):
            margin_head("arcface", 5, 4, sample_rate=rate)
