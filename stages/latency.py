"""`facekd latency`: latency, throughput, size and multiply-adds of the teacher and every student."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("latency")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
def latency(params_path: str) -> None:
    """Time every model on this CPU (ONNX Runtime) and write `latency.out` (a DVC metrics file).

    Batch 1 on one thread and on all cores, and a batch of `latency.throughput_batch` on all cores;
    the models take turns run by run, so load from other processes affects them alike.
    """
    from pipeline.evaluation.latency import time_deployed_models

    settings = load_settings(params_path)
    config, embed, train = required(settings, params_path, "latency", "embed", "train")
    report = time_deployed_models(config, embed.teacher, train.out_root, list(settings.students))
    for name, model in report["models"].items():
        single = model["batch1_1thread"]
        click.echo(
            f"{name}: {single['median_ms']:.3f} ms median, {single['p95_ms']:.3f} ms p95 (batch 1, 1 thread); "
            f"{model['size_bytes'] / 1e6:.2f} MB; {model['multiply_adds'] / 1e6:.1f} M multiply-adds"
        )
    click.echo(f"-> {config.out}")
