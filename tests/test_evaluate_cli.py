"""`facekd make-bin` and `facekd evaluate` with a real ONNX model, real .bin files and pair lists."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.verification_bin import load_bin
from pipeline.teacher import OnnxTeacher
from pipeline.verification import verification_report
from stages.cli import cli


def _params(tmp_path: Path, pairs: list[str]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {
        "pairs": pairs, "preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5},
        "device": "auto", "batch_size": 16, "folds": 10,
    }}))
    return path


def test_make_bin_then_evaluate_matches_a_direct_computation(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["make-bin", str(face_folder), str(tmp_path / "faces.bin"), "--pairs", "40", "--seed", "3"])
    assert made.exit_code == 0, made.output
    pairs = load_bin(tmp_path / "faces.bin")
    assert len(pairs) == 40 and pairs.issame.sum() == 20
    assert len(set(pairs.images)) < len(pairs.images)  # repeated images: each is embedded once, used everywhere

    result = runner.invoke(cli, ["evaluate", "--params", str(_params(tmp_path, [str(tmp_path / "faces.bin")])),
                                 "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["faces"]

    teacher = OnnxTeacher(tiny_teacher)
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
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(_params(tmp_path, [str(pair_list)])),
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
    result = CliRunner().invoke(cli, ["evaluate", "--params", str(_params(tmp_path, [str(evil)])),
                                      "--onnx", str(tiny_teacher), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and "evil.bin" in result.output and "pwned" not in result.output
    assert "Traceback" not in result.output
