"""`facekd quantize --student NAME`: the student's static int8 model, beside its fp32 one."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.errors import FacekdError
from stages.params import load_section

INT8_MODEL = "model.int8.onnx"
REPORT = "quantize.json"


@click.command("quantize")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
def quantize(params_path: str, name: str) -> None:
    """Quantize a trained student to int8 (ONNX Runtime, static, calibrated on its training images).

    Writes model.int8.onnx next to model.onnx, and quantize.json with every candidate format's
    agreement with fp32, size and latency, and why the kept one was chosen.
    """
    from pipeline.data.open import open_dataset
    from pipeline.files import write_text_atomically
    from pipeline.evaluation.quantize import ACTIVATION_TYPES, FORMATS, METHODS, quantize_model, sample_images, student_pixels
    from stages.train import student_section

    student = student_section(params_path, name)
    section = load_section(params_path, "quantize")
    out_dir = Path(student.get("out_root", str)) / name
    fp32_path = out_dir / "model.onnx"
    if not fp32_path.is_file():
        raise FacekdError(f"{fp32_path}: student '{name}' has no exported model; run `dvc repro train@{name}` first")
    calibration_count = section.positive("calibration_images")
    needed = calibration_count + section.positive("validation_images")
    dataset_path = student.get("dataset", str)
    dataset = open_dataset(dataset_path)
    if needed > len(dataset):
        raise FacekdError(
            f"{section.where('calibration_images')} + validation_images is {needed}, but {dataset_path} "
            f"has {len(dataset)} images; expected at most that many"
        )
    images = sample_images(dataset, needed, section.get("seed", int))
    formats = section.get("formats", list)
    if not formats or any(value not in FORMATS for value in formats):
        raise FacekdError(f"{section.where('formats')} is {formats!r}; expected a non-empty list of {', '.join(FORMATS)}")
    report = quantize_model(
        fp32_path, out_dir / INT8_MODEL, student_pixels(images[:calibration_count]), student_pixels(images[calibration_count:]),
        formats=formats, method=section.choice("method", tuple(METHODS)), per_channel=section.get("per_channel", bool),
        activation_type=section.choice("activation_type", tuple(ACTIVATION_TYPES)),
        agreement_tolerance=section.positive("agreement_tolerance", float),
        latency_runs=section.positive("latency_runs"),
    )
    write_text_atomically(out_dir / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    chosen = report["candidates"][report["chosen"]]
    click.echo(
        f"student {name}: {out_dir / INT8_MODEL} ({chosen['size_bytes'] / 1e6:.2f} MB, "
        f"cosine to fp32 min {chosen['cosine_min']:.4f} mean {chosen['cosine_mean']:.4f}); {report['reason']}"
    )
