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
    from pipeline.stage_two.section import train_section
    from pipeline.stage_two.train import MODEL

    section = required(load_settings(params_path), params_path, "teacher")
    result = train_section(section, section.out, progress=not quiet, report=lambda line: click.echo(line, err=True))
    click.echo(f"teacher exported to {result.out_dir / MODEL} ({result.metrics['samples_per_second']:.0f} images/s)")
