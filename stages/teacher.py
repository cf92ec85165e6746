"""`facekd teacher`: train the default teacher on the teacher set and export it to ONNX.

Only the default pipeline needs this stage: a user with a teacher of their own points
`embed.teacher` at its ONNX file instead.
"""
from __future__ import annotations

import click

from stages.params import load_section


@click.command("teacher")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def teacher(params_path: str, quiet: bool) -> None:
    """Train a margin-loss backbone on `teacher.dataset` and export it to `<teacher.out>/model.onnx`."""
    from pipeline.data.open import open_dataset
    from pipeline.stage_two.train import MODEL, train
    from stages.training import compile_where_safe, memory_budget_bytes, train_config_from

    section = load_section(params_path, "teacher")
    config = train_config_from(section)
    if config.distillation.uses_teacher:
        raise click.ClickException(f"{params_path}: teacher.distillation must not set distillation terms")
    dataset = open_dataset(section.get("dataset", str))
    (config,) = compile_where_safe([config], dataset)
    result = train(
        config, dataset, section.get("out", str),
        images_memory_bytes=memory_budget_bytes(section, "images_memory_gb", 2.0), progress=not quiet,
    )
    click.echo(f"teacher exported to {result.out_dir / MODEL} ({result.metrics['samples_per_second']:.0f} images/s)")
