"""Evaluating an ONNX face model (teacher or exported student) on verification pair sets."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.verification_bin import VerificationPairs
from pipeline.files import write_text_atomically
from pipeline.errors import FacekdError
from pipeline.face_model import OnnxFaceModel
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.inputs import load_pair_sets, open_evaluated_model
from pipeline.evaluation.verification import verification_report
from pipeline.stage_one.config import PreprocessingConfig

METRICS = "metrics.json"  # in a model's evaluation folder, beside ROC_DIR
ROC_DIR = "roc"


def embed_pair_images(model: OnnxFaceModel, pairs: VerificationPairs, batch_images: int = 512) -> np.ndarray:
    """Embeddings of every image of the pair set and of its flip: float32 2N x 2 x D.

    Pair sets repeat images (each of our held-out images sits in about six pairs), so each distinct
    encoded image is decoded and embedded once and its embedding copied to every place it occurs.
    """
    first_occurrences: list[int] = []  # per distinct image, the index where it first occurs
    distinct_of_image: dict[bytes, int] = {}
    distinct = np.empty(len(pairs.images), dtype=np.int64)
    for index, image in enumerate(pairs.images):
        if image not in distinct_of_image:
            distinct_of_image[image] = len(first_occurrences)
            first_occurrences.append(index)
        distinct[index] = distinct_of_image[image]
    parts = []
    for start in range(0, len(first_occurrences), batch_images):
        images = [pairs.decode(index) for index in first_occurrences[start:start + batch_images]]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise FacekdError(f"{pairs.origin}: images of different sizes {sorted(shapes)}; expected aligned faces of one size")
        parts.append(model.embed_with_flip(np.stack(images)))
    return np.concatenate(parts)[distinct]


def evaluate_pairs(model: OnnxFaceModel, pairs: VerificationPairs, n_folds: int = 10) -> dict[str, Any]:
    """The insightface verification report (accuracy-flip, TAR@FAR, XNorm, ROC) of `model` on `pairs`."""
    embeddings = embed_pair_images(model, pairs)
    first, second = embeddings[0::2], embeddings[1::2]
    return verification_report(
        first[:, 0], second[:, 0], pairs.issame, n_folds, flipped_embeddings1=first[:, 1], flipped_embeddings2=second[:, 1]
    )


def evaluate_model(
    config: EvaluateConfig,
    model_path: str | Path,
    out_dir: str | Path,
    *,
    teacher_preprocessing: PreprocessingConfig | None,
    settings_file: str,
) -> dict[str, dict[str, Any]]:
    """`facekd evaluate`: the report of `model_path` on every pair set of `config.pairs`, by pair set
    name, written to `out_dir` (METRICS, and one ROC CSV per pair set under ROC_DIR).

    `teacher_preprocessing`: a teacher's own pixels (`embed.preprocessing`); None for a student.
    `settings_file` (where `config` came from) is named in errors.
    """
    model = open_evaluated_model(config, model_path, teacher_preprocessing)
    pair_sets = load_pair_sets(config.pairs, f"{settings_file}: evaluate.pairs")
    reports = {name: evaluate_pairs(model, pairs, config.folds) for name, pairs in pair_sets.items()}
    write_evaluation(reports, Path(out_dir) / METRICS, Path(out_dir) / ROC_DIR)
    return reports


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a report (what DVC compares), without the ROC curve and per-fold lists."""
    return {
        "accuracy": report["accuracy"],
        "accuracy_std": report["accuracy_std"],
        "best_threshold": report["best_threshold"],
        "xnorm": report["xnorm"],
        "num_pairs": report["num_pairs"],
        **{f"tar_at_far_{far}": tar for far, tar in report["tar_at_far"].items()},
    }


def write_evaluation(reports: dict[str, dict[str, Any]], metrics_path: str | Path, roc_dir: str | Path) -> None:
    """metrics JSON (one entry per pair set) and one ROC CSV per pair set, each written atomically."""
    metrics_path, roc_dir = Path(metrics_path), Path(roc_dir)
    roc_dir.mkdir(parents=True, exist_ok=True)
    for name, report in reports.items():
        roc = report["roc"]
        rows = zip(roc["fpr"], roc["tpr"], roc["thresholds"])
        write_text_atomically(roc_dir / f"{name}.csv", "fpr,tpr,threshold\n" + "".join(f"{f:.6g},{t:.6g},{d:.6g}\n" for f, t, d in rows))
    metrics = {name: summary_metrics(report) for name, report in reports.items()}
    write_text_atomically(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def read_roc(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from a ROC CSV written by `write_evaluation`."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return np.array([float(r["fpr"]) for r in rows]), np.array([float(r["tpr"]) for r in rows])
