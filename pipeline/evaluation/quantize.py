"""Static int8 quantization of an exported student with ONNX Runtime, checked against fp32.

Which int8 graph runs fastest depends on the CPU and the network (ONNX Runtime has fast int8
kernels for some layer shapes and not for others), so each requested format is built, compared
with fp32 on held-out images (cosine of the embeddings) and timed; the fastest of those that
agree as well as the best one is kept, and every candidate's numbers are reported.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from pipeline.data.dataset import FaceDataset
from pipeline.data.open import open_dataset
from pipeline.errors import FacekdError
from pipeline.evaluation.config import QuantizeConfig
from pipeline.evaluation.inputs import INT8_MODEL, MODEL
from pipeline.files import write_text_atomically, written_atomically
from pipeline.evaluation.latency import Setting, open_session, time_interleaved
from pipeline.face_model import Preprocessing

FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
# uint8 activations with int8 weights (U8S8) is what ONNX Runtime's x86 int8 kernels are fastest at
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_BATCH = 32
# a later format replaces an earlier one only when this much faster, so timing noise cannot flip the choice
MIN_SPEED_GAIN = 0.05
REPORT = "quantize.json"  # every candidate's numbers and why the kept one was chosen, beside the int8 model


def sample_images(dataset: FaceDataset, count: int, seed: int) -> np.ndarray:
    """`count` decoded images drawn without replacement (seeded, in dataset order): uint8 N x H x W x 3."""
    if count > len(dataset):
        raise FacekdError(f"{count} images requested for quantization but the dataset has only {len(dataset)}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))
    return np.stack([dataset.load(int(index)) for index in chosen])


def student_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 RGB -> float32 N x 3 x H x W as the students are trained, (x - 127.5) / 127.5."""
    return np.ascontiguousarray(Preprocessing().apply(images).transpose(0, 3, 1, 2))


class _PixelBatches(CalibrationDataReader):
    """Feeds the calibration pixels to ONNX Runtime's calibrator in fixed batches."""

    def __init__(self, input_name: str, pixels: np.ndarray) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: pixels[start:start + CALIBRATION_BATCH]} for start in range(0, len(pixels), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def embed(path: str | Path, pixels: np.ndarray) -> np.ndarray:
    session = open_session(path, threads=0)
    return session.run(None, {session.get_inputs()[0].name: pixels})[0].astype(np.float32)


def cosine_agreement(reference: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    """Min and mean cosine between each image's fp32 and int8 embeddings."""
    cosines = (reference * embeddings).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(embeddings, axis=1))
    return {"cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean())}


@dataclass(frozen=True)
class QuantizedStudent:
    int8_path: Path
    report: dict[str, object]  # also written to REPORT beside the model


def quantize_student(
    student_dir: Path, dataset_path: str, config: QuantizeConfig, *, student_name: str, settings_file: str
) -> QuantizedStudent:
    """`facekd quantize`: the student in `student_dir` quantized to int8, calibrated and checked on
    images drawn from its training set `dataset_path`; the report written to `student_dir / REPORT`.

    Both checks come before any work; `settings_file` (where `config` came from) is named in errors.
    """
    fp32_path, int8_path = student_dir / MODEL, student_dir / INT8_MODEL
    if not fp32_path.is_file():
        raise FacekdError(
            f"{fp32_path}: student '{student_name}' has no exported model; run `dvc repro train@{student_name}` first"
        )
    needed = config.calibration_images + config.validation_images
    dataset = open_dataset(dataset_path)
    if needed > len(dataset):
        raise FacekdError(
            f"{settings_file}: quantize.calibration_images + validation_images is {needed}, but {dataset_path} "
            f"has {len(dataset)} images; expected at most that many"
        )
    pixels = student_pixels(sample_images(dataset, needed, config.seed))
    report = quantize_model(
        fp32_path, int8_path, pixels[:config.calibration_images], pixels[config.calibration_images:], config
    )
    write_text_atomically(student_dir / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return QuantizedStudent(int8_path, report)


def quantize_model(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_pixels: np.ndarray,
    validation_pixels: np.ndarray,
    config: QuantizeConfig,
) -> dict[str, object]:
    """Quantize `fp32_path` in each of `config.formats`, write the chosen one to `out_path`, return the report.

    The chosen candidate is the fastest (batch 1, one thread, median) among those whose mean cosine
    to fp32 is within `config.agreement_tolerance` of the best candidate's; within MIN_SPEED_GAIN of each
    other, the one listed first wins. ONNX Runtime's calibration and quantization are deterministic:
    the same inputs and format give the same bytes (so DVC sees no change when the stage reruns).
    """
    formats, method, activation_type = config.formats, config.method, config.activation_type
    per_channel, agreement_tolerance = config.per_channel, config.agreement_tolerance
    input_name = open_session(fp32_path, threads=1).get_inputs()[0].name
    reference = embed(fp32_path, validation_pixels)
    if not np.isfinite(reference).all():
        raise FacekdError(f"{fp32_path}: non-finite embeddings of the validation images; expected a model with finite outputs")
    with tempfile.TemporaryDirectory(prefix="facekd-quantize-") as workdir:
        paths = {"fp32": Path(fp32_path)}
        for name in formats:
            paths[name] = Path(workdir) / f"{name}.onnx"
            quantize_static(
                str(fp32_path), str(paths[name]), _PixelBatches(input_name, calibration_pixels),
                quant_format=FORMATS[name], per_channel=per_channel, activation_type=ACTIVATION_TYPES[activation_type],
                weight_type=QuantType.QInt8, calibrate_method=METHODS[method],
            )
        timings = time_interleaved(paths, Setting("batch1_1thread", 1, 1, config.latency_runs))
        candidates = {
            name: {
                **cosine_agreement(reference, embed(path, validation_pixels)),
                "size_bytes": path.stat().st_size,
                "batch1_1thread_median_ms": timings[name]["median_ms"],
                "batch1_1thread_p95_ms": timings[name]["p95_ms"],
            }
            for name, path in paths.items()
        }
        best_agreement = max(candidates[name]["cosine_mean"] for name in formats)
        accurate = [name for name in formats if candidates[name]["cosine_mean"] >= best_agreement - agreement_tolerance]
        chosen = accurate[0]
        for name in accurate[1:]:
            if candidates[name]["batch1_1thread_median_ms"] < (1 - MIN_SPEED_GAIN) * candidates[chosen]["batch1_1thread_median_ms"]:
                chosen = name
        with written_atomically(out_path) as temporary:
            shutil.copyfile(paths[chosen], temporary)
    fp32_ms, chosen_ms = candidates["fp32"]["batch1_1thread_median_ms"], candidates[chosen]["batch1_1thread_median_ms"]
    reason = (
        f"{chosen}: fastest at batch 1, 1 thread ({chosen_ms:.3f} ms median; ties within {MIN_SPEED_GAIN:.0%} go to the "
        f"first listed) among formats whose mean cosine to fp32 is within {agreement_tolerance} of the best ({best_agreement:.4f}); "
        + (f"{fp32_ms / chosen_ms:.2f}x faster than fp32" if chosen_ms < fp32_ms else
           f"{chosen_ms / fp32_ms:.2f}x SLOWER than fp32 ({fp32_ms:.3f} ms) on this CPU: it serves as the small model")
    )
    return {
        "chosen": chosen,
        "reason": reason,
        "candidates": candidates,
        "calibration": {
            "method": method, "per_channel": per_channel, "activation_type": activation_type, "weight_type": "int8",
            "calibration_images": len(calibration_pixels), "validation_images": len(validation_pixels),
        },
    }
