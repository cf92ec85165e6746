import copy

import onnx
import pytest
import torch
from torch import nn

from pipeline.errors import FacekdError
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import check_onnx_matches, export_onnx

INPUT_SIZE = 32


def calibrate_batchnorm(model: nn.Module) -> nn.Module:
    """Give BatchNorm real running statistics, so eval-mode outputs have a sane scale; leaves train mode on."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1)))
    return model


@pytest.fixture(scope="module", params=[("iresnet18", 0.25), ("mobilefacenet", 0.5)], ids=lambda p: p[0])
def exported(request, tmp_path_factory):
    name, width = request.param
    torch.manual_seed(0)
    model = calibrate_batchnorm(build_backbone(name, embedding_dim=64, input_size=INPUT_SIZE, width=width))
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    export_onnx(model, path, INPUT_SIZE)
    return model, path


@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnx_matches_torch(exported, batch_size):
    model, path = exported
    check_onnx_matches(model, path, INPUT_SIZE, batch_size=batch_size)


def test_export_writes_one_file_with_named_dynamic_batch(exported):
    model, path = exported
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["embedding"]
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert model.training  # export switched to eval mode only while exporting


def test_check_catches_a_model_that_differs(exported):
    model, path = exported
    changed = copy.deepcopy(model)
    embedding_norm = [m for m in changed.modules() if isinstance(m, nn.BatchNorm1d)][-1]
    with torch.no_grad():
        embedding_norm.bias[0] += 0.01
    with pytest.raises(FacekdError, match=r"differs from PyTorch by up to 0\.01"):
        check_onnx_matches(changed, path, INPUT_SIZE)


def test_check_reports_an_unreadable_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    model = build_backbone("iresnet18", input_size=16, width=0.25)
    with pytest.raises(FacekdError, match="broken.onnx: not a readable ONNX model"):
        check_onnx_matches(model, path, 16)


def test_export_that_crashes_midway_leaves_no_file(tmp_path, monkeypatch):
    def write_half_then_crash(model, args, f, **kwargs):
        open(f, "wb").write(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", write_half_then_crash)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(build_backbone("iresnet18", input_size=16, width=0.25), tmp_path / "model.onnx", 16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("scale", "message"),
    [(float("nan"), r"weight '.*' has non-finite values"), (3e38, "ONNX output has .* non-finite values")],
    ids=["nan-weight", "output-overflows"],
)
def test_a_diverged_model_is_never_published(tmp_path, scale, message):
    """NaN weights, or finite weights whose outputs overflow: refused, and nothing at the final path."""
    model = calibrate_batchnorm(build_backbone("mobilefacenet", embedding_dim=64, input_size=INPUT_SIZE, width=0.5))
    embedding_norm = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)][-1]
    with torch.no_grad():
        embedding_norm.weight.fill_(scale)
    with pytest.raises(FacekdError, match=r"model\.onnx\.partial: " + message):
        export_onnx(model, tmp_path / "model.onnx", INPUT_SIZE)
    assert list(tmp_path.iterdir()) == []
