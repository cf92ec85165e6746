"""`facekd train --student NAME`: stage two for one student of params.yaml `students`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.errors import FacekdError
from stages.params import Section, load_params, load_section

if TYPE_CHECKING:
    from pipeline.stage_two.train import TrainConfig
    from pipeline.stage_two.training_data import TrainingInputs


def merged_section(params_path: str, group: str, name: str, overrides: Any) -> Section:
    """The `train` defaults with `overrides` (e.g. `students.<name>`) merged on top."""
    from stages.training import deep_merge

    if overrides is not None and not isinstance(overrides, dict):
        raise FacekdError(f"{params_path}: {group}.{name} is {overrides!r}; expected a mapping of overrides of `train`")
    defaults = load_section(params_path, "train")
    return Section(Path(params_path), f"{group}.{name}", deep_merge(defaults.values, overrides or {}))


def student_section(params_path: str, name: str) -> Section:
    students = load_params(params_path).get("students") or {}
    if name not in students:
        raise FacekdError(f"{params_path}: students has no student {name!r} (known: {', '.join(students) or 'none'})")
    return merged_section(params_path, "students", name, students[name])


def training_inputs(section: Section, configs: list["TrainConfig"]) -> "TrainingInputs":
    """The data a training section names, loaded once for all `configs` (targets / pairs only if used)."""
    from pipeline.data.open import open_dataset
    from pipeline.stage_two.training_data import load_training_inputs
    from stages.training import memory_budget_bytes

    return load_training_inputs(
        open_dataset(section.get("dataset", str)),
        section.get("store", str),
        section.get("pairs", str) if any(config.sampler == "pairs" for config in configs) else None,
        load_targets=any(config.distillation.uses_teacher for config in configs),
        memory_budget_bytes=memory_budget_bytes(section, "targets_memory_gb", 8.0),
    )


@click.command("train")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(params_path: str, name: str, quiet: bool) -> None:
    """Train one student from the cached teacher embeddings (and mined pairs); export it to ONNX."""
    from pipeline.stage_two.train import MODEL, train as train_student
    from stages.training import compile_where_safe, memory_budget_bytes, train_config_from

    section = student_section(params_path, name)
    config = train_config_from(section)
    inputs = training_inputs(section, [config])
    (config,) = compile_where_safe([config], inputs.dataset, inputs.usable)
    result = train_student(
        config, inputs.dataset, Path(section.get("out_root", str)) / name,
        images_memory_bytes=memory_budget_bytes(section, "images_memory_gb", 2.0), progress=not quiet, **inputs.train_arguments(),
    )
    resumed = f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""
    click.echo(f"student {name}: {result.out_dir / MODEL}{resumed}, {result.metrics['samples_per_second']:.0f} images/s")
