"""`facekd train --student NAME`: stage two for one student of params.yaml `students`."""
from __future__ import annotations

from pathlib import Path

import click

from stages.params import load_settings, student


@click.command("train")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(params_path: str, name: str, quiet: bool) -> None:
    """Train one student from the cached teacher embeddings (and mined pairs); export it to ONNX."""
    from pipeline.stage_two.section import train_section
    from pipeline.stage_two.train import MODEL

    section = student(load_settings(params_path), params_path, name)
    result = train_section(
        section, Path(section.out_root) / name, progress=not quiet, report=lambda line: click.echo(line, err=True),
    )
    resumed = f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""
    click.echo(f"student {name}: {result.out_dir / MODEL}{resumed}, {result.metrics['samples_per_second']:.0f} images/s")
