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
    from pipeline.stage_two.compile_choice import compile_where_safe
    from pipeline.stage_two.train import MODEL, train as train_student
    from pipeline.stage_two.training_data import load_section_inputs

    section = student(load_settings(params_path), params_path, name)
    config = section.training_config()
    inputs = load_section_inputs(section, [config])
    (config,) = compile_where_safe([config], inputs.dataset, inputs.usable, lambda line: click.echo(line, err=True))
    result = train_student(
        config, inputs.dataset, Path(section.out_root) / name,
        images_memory_bytes=section.images_memory_bytes, progress=not quiet, **inputs.train_arguments(),
    )
    resumed = f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""
    click.echo(f"student {name}: {result.out_dir / MODEL}{resumed}, {result.metrics['samples_per_second']:.0f} images/s")
