"""`facekd teacher`: train the default teacher on the teacher set and export it to ONNX.

Only the default pipeline needs this stage: a user with a teacher of their own points
`embed.teacher` at its ONNX file instead.
"""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("teacher")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def teacher(params_path: str, quiet: bool) -> None:
    """Train a margin-loss backbone on `teacher.dataset` and export it to `<teacher.out>/model.onnx`."""
    from pipeline.data.open import open_dataset
    from pipeline.stage_two.compile_choice import compile_where_safe
    from pipeline.stage_two.train import MODEL, train

    section = required(load_settings(params_path), params_path, "teacher")
    dataset = open_dataset(section.dataset)
    (config,) = compile_where_safe([section.training_config()], dataset, None, lambda line: click.echo(line, err=True))
    result = train(config, dataset, section.out, images_memory_bytes=section.images_memory_bytes, progress=not quiet)
    click.echo(f"teacher exported to {result.out_dir / MODEL} ({result.metrics['samples_per_second']:.0f} images/s)")
