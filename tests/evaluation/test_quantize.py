"""Static int8 quantization, the latency report and `facekd results` on tiny real students:
exported by torch, quantized by ONNX Runtime, run by ONNX Runtime."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.evaluation.latency import count_onnx_multiply_adds, default_settings, latency_report
from pipeline.stage_two.models import build_backbone, count_multiply_adds
from pipeline.stage_two.models.export import export_onnx
from pipeline.evaluation.config import QuantizeConfig
from pipeline.evaluation.quantize import cosine_agreement, embed, quantize_model, sample_images, student_pixels
from stages.cli import cli
from tests.tiny_faces import TINY_SIZE

INT8_OPS = {"QuantizeLinear", "QLinearConv", "ConvInteger"}


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "model.onnx"
    export_onnx(build_backbone("mobilefacenet", 16, TINY_SIZE, 0.125), path, TINY_SIZE)
    return path


@pytest.fixture(scope="module")
def face_pixels(face_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and validation pixels: disjoint samples of the tiny face folder."""
    pixels = student_pixels(sample_images(ImageFolderDataset(face_folder), 32, seed=0))
    return pixels[:16], pixels[16:]


def test_quantized_student_is_smaller_agrees_with_fp32_and_is_reproducible(
    tmp_path: Path, tiny_student: Path, face_pixels: tuple[np.ndarray, np.ndarray]
) -> None:
    calibration, validation = face_pixels
    out = tmp_path / "model.int8.onnx"
    report = quantize_model(tiny_student, out, calibration, validation, QuantizeConfig(formats=["qdq", "qoperator"], latency_runs=20))

    assert report["chosen"] in ("qdq", "qoperator") and report["reason"].startswith(report["chosen"])
    assert set(report["candidates"]) == {"fp32", "qdq", "qoperator"}
    assert all(candidate["batch1_1thread_median_ms"] > 0 for candidate in report["candidates"].values())
    assert out.stat().st_size < tiny_student.stat().st_size
    assert INT8_OPS & {node.op_type for node in onnx.load(str(out)).graph.node}
    agreement = cosine_agreement(embed(tiny_student, validation), embed(out, validation))
    assert agreement["cosine_min"] > 0.9, agreement
    assert agreement["cosine_mean"] == pytest.approx(report["candidates"][report["chosen"]]["cosine_mean"], abs=1e-6)

    again = tmp_path / "again.int8.onnx"
    quantize_model(tiny_student, again, calibration, validation, QuantizeConfig(formats=[report["chosen"]], latency_runs=2))
    assert again.read_bytes() == out.read_bytes()  # DVC sees no change when the stage reruns


def test_unknown_quantize_settings_are_named() -> None:
    from pipeline.errors import FacekdError

    with pytest.raises(FacekdError, match="method: 'kl' — expected 'minmax', 'entropy' or 'percentile'"):
        QuantizeConfig(formats=["qdq"], method="kl")
    with pytest.raises(FacekdError, match="formats.0: 'qlinear' — expected 'qdq' or 'qoperator'"):
        QuantizeConfig(formats=["qlinear"])


@pytest.mark.parametrize("backbone", ["mobilefacenet", "iresnet18"])
def test_graph_multiply_adds_match_the_torch_count_in_fp32_and_int8(
    tmp_path: Path, backbone: str, face_pixels: tuple[np.ndarray, np.ndarray]
) -> None:
    model = build_backbone(backbone, 16, TINY_SIZE, 0.125)
    fp32 = tmp_path / "model.onnx"
    export_onnx(model, fp32, TINY_SIZE)
    expected = count_multiply_adds(model, TINY_SIZE)
    assert count_onnx_multiply_adds(fp32) == expected
    for quant_format in ("qdq", "qoperator"):
        int8 = tmp_path / f"{quant_format}.onnx"
        quantize_model(fp32, int8, *face_pixels, QuantizeConfig(formats=[quant_format], latency_runs=2))
        assert count_onnx_multiply_adds(int8) == expected, quant_format


def test_latency_report_times_every_model_in_every_setting(tiny_student: Path, tiny_teacher: Path) -> None:
    report = latency_report({"teacher": tiny_teacher, "student": tiny_student}, default_settings(7, 3, 4))
    assert set(report["settings"]) == {"batch1_1thread", "batch1_all_threads", "batch4_all_threads"}
    for name, path in (("teacher", tiny_teacher), ("student", tiny_student)):
        model = report["models"][name]
        assert model["size_bytes"] == path.stat().st_size and model["multiply_adds"] > 0
        for setting, runs in (("batch1_1thread", 7), ("batch1_all_threads", 7), ("batch4_all_threads", 3)):
            timing = model[setting]
            assert timing["runs"] == runs
            assert 0 < timing["median_ms"] <= timing["p95_ms"] and timing["images_per_second"] > 0


def test_pipeline_commands_quantize_evaluate_time_and_report(
    tmp_path: Path, face_folder: Path, tiny_teacher: Path, tiny_student: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quantize -> evaluate (fp32 and int8) -> latency -> results, as the DVC stages call them."""
    monkeypatch.setenv("COLUMNS", "250")  # rich would squeeze the table into 80 columns
    students = tmp_path / "students"
    (students / "tiny").mkdir(parents=True)
    (students / "tiny" / "model.onnx").write_bytes(tiny_student.read_bytes())
    pairs = tmp_path / "faces.bin"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "embed": {"teacher": str(tiny_teacher), "preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5}},
        "train": {"dataset": str(face_folder), "out_root": str(students)},
        "students": {"tiny": {}},
        "evaluate": {"pairs": str(pairs), "out_root": str(tmp_path / "eval"), "device": "cpu", "batch_size": 16, "folds": 2},
        "quantize": {"calibration_images": 16, "validation_images": 16, "seed": 0, "method": "minmax", "formats": ["qdq"],
                     "per_channel": True, "activation_type": "uint8", "agreement_tolerance": 0.002, "latency_runs": 5},
        "latency": {"runs": 5, "throughput_runs": 2, "throughput_batch": 4, "out": str(tmp_path / "eval" / "latency.json")},
    }))
    runner = CliRunner()

    def invoke(*arguments: str) -> str:
        result = runner.invoke(cli, [*arguments[:1], "--params", str(params), *arguments[1:]])
        assert result.exit_code == 0, result.output
        return result.output

    assert runner.invoke(cli, ["make-bin", str(face_folder), str(pairs), "--pairs", "20"]).exit_code == 0
    assert "model.int8.onnx" in invoke("quantize", "--student", "tiny")
    assert json.loads((students / "tiny" / "quantize.json").read_text())["chosen"] == "qdq"
    invoke("evaluate", "--as-teacher", "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval" / "teacher"))
    invoke("evaluate", "--onnx", str(students / "tiny" / "model.onnx"), "--out", str(tmp_path / "eval" / "tiny"))
    invoke("evaluate", "--onnx", str(students / "tiny" / "model.int8.onnx"), "--out", str(tmp_path / "eval" / "tiny.int8"))
    without_latency = invoke("results", "--out", str(tmp_path / "report"))
    assert "tiny.int8" in without_latency and "M MACs" not in without_latency

    invoke("latency")
    latency = json.loads((tmp_path / "eval" / "latency.json").read_text())
    assert set(latency["models"]) == {"teacher", "tiny", "tiny.int8"}
    output = invoke("results", "--out", str(tmp_path / "report"))
    for column in ("b1 1 thr ms", "b1 all ms", "b4 img/s", "MB", "M MACs"):
        assert column in output, column
    assert "tiny.int8 vs fp32:" in output and "smaller" in output
    assert "tiny vs teacher:" in output
    assert (tmp_path / "report" / "accuracy_latency_faces.png").is_file()


def test_quantize_names_the_settings_when_the_dataset_is_too_small(tmp_path: Path, face_folder: Path, tiny_student: Path) -> None:
    (tmp_path / "students" / "tiny").mkdir(parents=True)
    (tmp_path / "students" / "tiny" / "model.onnx").write_bytes(tiny_student.read_bytes())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "train": {"dataset": str(face_folder), "out_root": str(tmp_path / "students")}, "students": {"tiny": {}},
        "quantize": {"calibration_images": 40, "validation_images": 40, "seed": 0},
    }))
    result = CliRunner().invoke(cli, ["quantize", "--params", str(params), "--student", "tiny"])
    assert result.exit_code == 1 and "quantize.calibration_images + validation_images is 80" in result.output
    assert "has 42 images" in result.output and not (tmp_path / "students" / "tiny" / "model.int8.onnx").exists()
