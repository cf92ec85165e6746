"""`facekd latency`: latency, throughput, size and multiply-adds of the teacher and every student."""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.params import load_params, load_section
from stages.quantize import INT8_MODEL


def deployed_models(params_path: str) -> dict[str, Path]:
    """The teacher (`embed.teacher`), each student's fp32 model and its int8 model (`<name>.int8`), by name."""
    students = load_params(params_path).get("students") or {}
    train_root = Path(load_section(params_path, "train").get("out_root", str))
    models = {"teacher": Path(load_section(params_path, "embed").get("teacher", str))}
    for name in students:
        models[name] = train_root / name / "model.onnx"
        models[f"{name}.int8"] = train_root / name / INT8_MODEL
    return models


@click.command("latency")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
def latency(params_path: str) -> None:
    """Time every model on this CPU (ONNX Runtime) and write `latency.out` (a DVC metrics file).

    Batch 1 on one thread and on all cores, and a batch of `latency.throughput_batch` on all cores;
    the models take turns run by run, so load from other processes affects them alike.
    """
    from pipeline.files import write_text_atomically
    from pipeline.evaluation.latency import default_settings, latency_report

    section = load_section(params_path, "latency")
    settings = default_settings(
        section.positive("runs"), section.positive("throughput_runs"), section.positive("throughput_batch"),
    )
    report = latency_report(deployed_models(params_path), settings)
    out = section.get("out", str)
    write_text_atomically(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, model in report["models"].items():
        single = model["batch1_1thread"]
        click.echo(
            f"{name}: {single['median_ms']:.3f} ms median, {single['p95_ms']:.3f} ms p95 (batch 1, 1 thread); "
            f"{model['size_bytes'] / 1e6:.2f} MB; {model['multiply_adds'] / 1e6:.1f} M multiply-adds"
        )
    click.echo(f"-> {out}")
