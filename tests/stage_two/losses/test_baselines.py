import pytest
import torch

from pipeline.stage_two.losses import AdaArcDistillLoss, FCLoss, RawL2Loss, RKDLoss, SPLoss, embedding_projector
from tests.stage_two.losses import references

# Golden values: computed once with the loop implementations in references.py on the inputs
# of `embeddings()`, checked equal to pipeline.stage_two.losses, then hard-coded.
GOLDEN_SAME_DIM = {"raw_l2": 15.16333412681827, "fc": 1.850778362257912}
GOLDEN_RELATIONAL = {"rkd": 0.16718301447446246, "sp": 0.11723661668530211}  # student dim 4, teacher dim 6
GOLDEN_ADA_ARC_DISTILL = 42.40895928950287
LOSSES = {"raw_l2": RawL2Loss(), "fc": FCLoss(), "rkd": RKDLoss(), "sp": SPLoss()}
REFERENCES = {"raw_l2": references.raw_l2, "fc": references.fc, "rkd": references.rkd, "sp": references.sp}
LABELS = torch.tensor([0, 1, 0, 2, 1])  # classes 0 and 1 repeat: their centres take the last sample's update


def embeddings(student_dim: int = 6):
    torch.manual_seed(0)
    return torch.randn(5, student_dim, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)


@pytest.mark.parametrize("name", list(GOLDEN_SAME_DIM))
def test_golden_values_same_dimension(name):
    student, teacher = embeddings()
    assert LOSSES[name](student, teacher).item() == pytest.approx(GOLDEN_SAME_DIM[name], rel=1e-12)
    assert REFERENCES[name](student, teacher) == pytest.approx(GOLDEN_SAME_DIM[name], rel=1e-12)


@pytest.mark.parametrize("name", list(GOLDEN_RELATIONAL))
def test_golden_values_relational(name):
    student, teacher = embeddings(student_dim=4)
    assert LOSSES[name](student, teacher).item() == pytest.approx(GOLDEN_RELATIONAL[name], rel=1e-12)
    assert REFERENCES[name](student, teacher) == pytest.approx(GOLDEN_RELATIONAL[name], rel=1e-12)


@pytest.mark.parametrize("name", list(GOLDEN_RELATIONAL))
def test_gradcheck_relational(name):
    student, teacher = embeddings(student_dim=4)
    assert torch.autograd.gradcheck(lambda s: LOSSES[name](s, teacher), (student.requires_grad_(),))


def test_rkd_weights_scale_their_terms():
    student, teacher = embeddings(student_dim=4)
    distance_only = RKDLoss(distance_weight=1.0, angle_weight=0.0)(student, teacher)
    angle_only = RKDLoss(distance_weight=0.0, angle_weight=1.0)(student, teacher)
    assert RKDLoss()(student, teacher).item() == pytest.approx((distance_only + 2 * angle_only).item())
    assert distance_only > 0 and angle_only > 0


def test_relational_losses_ignore_scale_and_vanish_on_copies():
    _, teacher = embeddings()
    for loss in (RKDLoss(), SPLoss()):
        assert loss(3.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def ada_arc_distill_with(centres):
    loss = AdaArcDistillLoss(6, 3).double()
    loss.centres.copy_(centres)
    return loss


def test_ada_arc_distill_golden_value_and_centre_update():
    student, teacher = embeddings()
    torch.manual_seed(1)
    centres = torch.randn(3, 6, dtype=torch.float64)
    loss = ada_arc_distill_with(centres)
    value = loss(student, teacher, LABELS)
    expected_centres = references.ada_arc_distill_centres(centres, student, teacher, LABELS)
    torch.testing.assert_close(loss.centres, expected_centres, rtol=1e-12, atol=1e-12)
    assert value.item() == pytest.approx(GOLDEN_ADA_ARC_DISTILL, rel=1e-10)
    expected = references.margin_cross_entropy(student, expected_centres, LABELS, s=64.0, m2=0.45)
    assert expected == pytest.approx(GOLDEN_ADA_ARC_DISTILL, rel=1e-10)


def test_ada_arc_distill_centres_are_buffers_untouched_by_gradient():
    student, teacher = embeddings()
    loss = AdaArcDistillLoss(6, 3).double()
    assert "centres" in loss.state_dict() and not list(loss.parameters())
    student.requires_grad_(True)
    loss(student, teacher, LABELS).backward()
    assert student.grad is not None and not loss.centres.requires_grad


def test_ada_arc_distill_first_visit_moves_centre_to_teacher():
    # A centre orthogonal to t̂ (as a fresh N(0, 0.01) centre nearly is) gives α' = 1e-6.
    student, teacher = embeddings()
    centres = torch.zeros(3, 6, dtype=torch.float64)
    centres[:, 0] = 1.0
    teacher[0] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    loss = ada_arc_distill_with(centres)
    loss.update_centres(student[:1], teacher[:1], LABELS[:1])
    torch.testing.assert_close(loss.centres[0], (1 - 1e-6) * teacher[0] + 1e-6 * centres[0])
    torch.testing.assert_close(loss.centres[1:], centres[1:])


def test_projector_is_identity_for_equal_dims_and_linear_otherwise():
    assert isinstance(embedding_projector(512, 512), torch.nn.Identity)
    projector = embedding_projector(128, 512)
    assert projector(torch.randn(3, 128)).shape == (3, 512)
