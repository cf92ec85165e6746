"""`facekd make-bin` and `facekd evaluate` with a real ONNX model, real .bin files and pair lists."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.verification_bin import load_bin
from pipeline.face_model import OnnxFaceModel
from pipeline.evaluation.verification import verification_report
from stages.cli import cli


def _params(tmp_path: Path, pairs: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "evaluate": {"pairs": pairs, "device": "auto", "batch_size": 16, "folds": 10},
        "embed": {"preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5}},
    }))
    return path


def test_make_bin_then_evaluate_matches_a_direct_computation(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["make-bin", str(face_folder), str(tmp_path / "faces.bin"), "--pairs", "40", "--seed", "3"])
    assert made.exit_code == 0, made.output
    pairs = load_bin(tmp_path / "faces.bin")
    assert len(pairs) == 40 and pairs.issame.sum() == 20
    assert len(set(pairs.images)) < len(pairs.images)  # repeated images: each is embedded once, used everywhere

    result = runner.invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(tmp_path / "faces.bin"))),
                                 "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["faces"]

    teacher = OnnxFaceModel(tiny_teacher)
    images = np.stack([pairs.decode(i) for i in range(len(pairs.images))])
    plain, flipped = teacher.embed(images), teacher.embed(images[:, :, ::-1].copy())
    direct = verification_report(plain[0::2], plain[1::2], pairs.issame, 10, flipped[0::2], flipped[1::2])
    assert metrics["accuracy"] == pytest.approx(direct["accuracy"], abs=1e-12)
    assert metrics["xnorm"] == pytest.approx(direct["xnorm"], rel=1e-5)
    roc = (tmp_path / "eval" / "roc" / "faces.csv").read_text().splitlines()
    assert roc[0] == "fpr,tpr,threshold" and len(roc) > 2
    assert f"accuracy {direct['accuracy']:.4f}" in result.output


def test_evaluate_on_a_pair_list(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    lines = [f"{face_folder.name}/{dataset.keys[0]} {face_folder.name}/{dataset.keys[1]} 1",
             f"{face_folder.name}/{dataset.keys[0]} {face_folder.name}/{dataset.keys[-1]} 0"] * 10
    pair_list = face_folder.parent / "pairs.txt"
    pair_list.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(pair_list))),
                                      "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"]["num_pairs"] == 20


def test_evaluate_refuses_a_malicious_bin(tmp_path: Path, tiny_teacher: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([b"x", b"y"], [Payload()])))
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(evil))),
                                      "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and "evil.bin" in result.output and "pwned" not in result.output
    assert "Traceback" not in result.output


def test_evaluate_prints_no_trailing_separator_when_every_tar_is_null(
    tmp_path: Path, face_folder: Path, tiny_teacher: Path
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["make-bin", str(face_folder), str(tmp_path / "small.bin"), "--pairs", "20"]).exit_code == 0
    result = runner.invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(tmp_path / "small.bin"))),
                                 "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["small"]
    tars = [value for key, value in metrics.items() if key.startswith("tar_at_far_")]
    assert tars and set(tars) == {None}  # 10 different pairs: too few for FAR 1e-2
    assert re.fullmatch(r".*tiny\.onnx on small: accuracy \d\.\d{4} ± \d\.\d{4}\n", result.output), result.output


def test_evaluate_reads_a_bin_with_an_upper_case_suffix(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["make-bin", str(face_folder), str(tmp_path / "LFW.BIN"), "--pairs", "20"]).exit_code == 0
    result = runner.invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(tmp_path / "LFW.BIN"))),
                                 "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["LFW"]["num_pairs"] == 20


def test_make_bin_on_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    archive = tmp_path / "faces.zip"
    archive.write_bytes(b"PK\x03\x04")
    result = CliRunner().invoke(cli, ["make-bin", str(archive), str(tmp_path / "out.bin")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{archive}: is a file; expected a dataset folder" in result.output, result.output
    assert not (tmp_path / "out.bin").exists()


def test_evaluate_a_missing_model_names_it_without_calling_it_a_teacher(tmp_path: Path) -> None:
    student = tmp_path / "students" / "tiny" / "model.onnx"
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(_params(tmp_path, "lfw.bin")),
                                      "--onnx", str(student), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"model not found: {student}" in result.output and "teacher" not in result.output


def test_evaluate_as_teacher_names_the_bad_preprocessing_key(tmp_path: Path, tiny_teacher: Path) -> None:
    params = _params(tmp_path, "lfw.bin")
    values = yaml.safe_load(params.read_text())
    values["embed"]["preprocessing"]["std"] = 0.0
    params.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(params), "--as-teacher",
                                      "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{params}: embed.preprocessing.std: 0.0 — expected greater than 0" in result.output, result.output


def test_evaluate_every_pair_set_of_a_folder(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    """evaluate.pairs is one path (dvc.yaml's evaluate stages depend on it): a folder holds several sets."""
    runner = CliRunner()
    pair_sets = tmp_path / "pairs"
    pair_sets.mkdir()
    assert runner.invoke(cli, ["make-bin", str(face_folder), str(pair_sets / "lfw.bin"), "--pairs", "20"]).exit_code == 0
    dataset = ImageFolderDataset(face_folder)
    images = pair_sets / "images"
    shutil.copytree(face_folder, images)
    (pair_sets / "mine.txt").write_text(5 * (f"images/{dataset.keys[0]} images/{dataset.keys[1]} 1\n"
                                             f"images/{dataset.keys[0]} images/{dataset.keys[-1]} 0\n"))
    (pair_sets / "README.md").write_text("not a pair set\n")
    result = runner.invoke(cli, ["evaluate", "--params", str(_params(tmp_path, str(pair_sets))),
                                 "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {name: report["num_pairs"] for name, report in metrics.items()} == {"lfw": 20, "mine": 10}


@pytest.mark.parametrize(("pairs", "expected"), [
    (["a.bin", "b.bin"], "evaluate.pairs: ['a.bin', 'b.bin'] — expected one path: a .bin file, a pair list, or a folder of them"),
    ("missing.bin", "evaluate.pairs is 'missing.bin', which does not exist"),
])
def test_evaluate_names_a_bad_pairs_setting(tmp_path: Path, tiny_teacher: Path, pairs: object, expected: str) -> None:
    params = _params(tmp_path, "unused")
    values = yaml.safe_load(params.read_text())
    values["evaluate"]["pairs"] = pairs
    params.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(params), "--onnx", str(tiny_teacher),
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{params}: {expected}" in result.output, result.output
