import pytest
import torch

from pipeline.errors import FacekdError
from pipeline.stage_two.losses import FCLoss, ILEDLoss, iled_rho
from pipeline.stage_two.losses.iled import hard_count
from tests.stage_two.losses import references

# Golden values: computed once with references.iled (per-sample Python loop) on the inputs of
# `embeddings()`, checked equal to ILEDLoss, then hard-coded here.
GOLDEN = {
    (0.3, 1.0): 4.237099235512964,
    (1.0, 1.0): 3.181807155462878,
    (0.5, 2.5): 7.40683453828341,
}


def embeddings():
    torch.manual_seed(0)
    return torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 6, dtype=torch.float64)


@pytest.mark.parametrize(("rho", "beta"), list(GOLDEN))
def test_golden_values(rho, beta):
    student, teacher = embeddings()
    loss = ILEDLoss(beta=beta)(student, teacher, rho)
    assert loss.item() == pytest.approx(GOLDEN[rho, beta], rel=1e-12)
    assert references.iled(student, teacher, rho, beta) == pytest.approx(GOLDEN[rho, beta], rel=1e-12)


def test_gradcheck():
    student, teacher = embeddings()
    student.requires_grad_(True)
    loss = ILEDLoss(beta=1.0)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, 0.3), (student,))


def test_beta_zero_is_the_fc_loss():
    student, teacher = embeddings()
    student.requires_grad_(True)
    iled = ILEDLoss(beta=0.0)(student, teacher, 0.3)
    (iled_gradient,) = torch.autograd.grad(iled, student)
    fc = FCLoss()(student, teacher)
    (fc_gradient,) = torch.autograd.grad(fc, student)
    assert iled.item() == pytest.approx(fc.item(), rel=1e-14)
    torch.testing.assert_close(iled_gradient, fc_gradient)


def test_only_the_hard_set_gets_the_extra_weight():
    # distances ||ŝ − t̂||² are 0, 2, 4 (aligned, orthogonal, opposite); rho = 1/3 picks the last.
    teacher = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    student = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]], dtype=torch.float64)
    assert ILEDLoss(beta=1.0)(student, teacher, 1 / 3).item() == pytest.approx(2.0 + 4.0)
    assert ILEDLoss(beta=1.0)(student, teacher, 2 / 3).item() == pytest.approx(2.0 + 3.0)


def test_hard_count_rounds_up_but_not_on_float_noise():
    assert hard_count(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert hard_count(0.31, 10) == 4
    assert hard_count(1e-6, 10) == 1
    assert hard_count(1.0, 10) == 10


def test_rho_schedule():
    assert iled_rho(0, rho0=1.0, rho_min=0.3, ramp_epochs=10) == 1.0
    assert iled_rho(2.5, rho0=1.0, rho_min=0.3, ramp_epochs=10) == pytest.approx(0.825)
    assert iled_rho(10, rho0=1.0, rho_min=0.3, ramp_epochs=10) == pytest.approx(0.3)
    assert iled_rho(17.2, rho0=1.0, rho_min=0.3, ramp_epochs=10) == pytest.approx(0.3)
    assert iled_rho(0, rho0=1.0, rho_min=0.3, ramp_epochs=0) == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [{"rho0": 0.0}, {"rho_min": 1.5}])
def test_rho_schedule_rejects_fractions_outside_unit_interval(bad):
    with pytest.raises(FacekdError, match="rho"):
        iled_rho(1.0, **{"rho0": 1.0, "rho_min": 0.3, "ramp_epochs": 4, **bad})


def test_forward_rejects_bad_rho_and_beta():
    student, teacher = embeddings()
    with pytest.raises(FacekdError, match="rho"):
        ILEDLoss()(student, teacher, 0.0)
    with pytest.raises(FacekdError, match="beta"):
        ILEDLoss(beta=-1.0)
