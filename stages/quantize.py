"""`facekd quantize --student NAME`: the student's static int8 model, beside its fp32 one."""
from __future__ import annotations

from pathlib import Path

import click

from stages.params import load_settings, required, student


@click.command("quantize")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
def quantize(params_path: str, name: str) -> None:
    """Quantize a trained student to int8 (ONNX Runtime, static, calibrated on its training images).

    Writes model.int8.onnx next to model.onnx, and quantize.json with every candidate format's
    agreement with fp32, size and latency, and why the kept one was chosen.
    """
    from pipeline.evaluation.quantize import quantize_student

    settings = load_settings(params_path)
    section = student(settings, params_path, name)
    config = required(settings, params_path, "quantize")
    result = quantize_student(
        Path(section.out_root) / name, section.dataset, config, student_name=name, settings_file=params_path,
    )
    chosen = result.report["candidates"][result.report["chosen"]]
    click.echo(
        f"student {name}: {result.int8_path} ({chosen['size_bytes'] / 1e6:.2f} MB, "
        f"cosine to fp32 min {chosen['cosine_min']:.4f} mean {chosen['cosine_mean']:.4f}); {result.report['reason']}"
    )
