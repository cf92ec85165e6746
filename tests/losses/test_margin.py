import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import FacekdError
from pipeline.losses import CombinedMarginHead, margin_head
from tests.losses import references

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
