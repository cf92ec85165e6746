"""`facekd train --student NAME`: stage two for one student of params.yaml `students`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stages.params import Section, load_params, load_section


def merged_section(params_path: str, group: str, name: str, overrides: dict[str, Any] | None) -> Section:
    """The `train` defaults with `overrides` (e.g. `students.<name>`) merged on top."""
    from stages.training import deep_merge

    defaults = load_section(params_path, "train")
    return Section(Path(params_path), f"{group}.{name}", deep_merge(defaults.values, overrides or {}))


def student_section(params_path: str, name: str) -> Section:
    students = load_params(params_path).get("students") or {}
    if name not in students:
        raise click.ClickException(f"{params_path}: students has no student {name!r} (known: {', '.join(students) or 'none'})")
    return merged_section(params_path, "students", name, students[name])


def training_inputs(section: Section, needs_targets: bool, needs_pairs: bool) -> dict[str, Any]:
    """The dataset, teacher targets, usable rows and mined pairs of a training section, cross-checked."""
    import numpy as np

    from pipeline.data.open import open_dataset
    from pipeline.mining import PairTable
    from pipeline.store import EmbeddingStore
    from pipeline.training_data import TeacherTargets

    dataset = open_dataset(section.get("dataset", str))
    store_path = section.get("store", str)
    inputs: dict[str, Any] = {"dataset": dataset}
    with EmbeddingStore(store_path) as store:
        store.check_matches({"dataset_kind": dataset.kind, "dataset_fingerprint": dataset.fingerprint()})
        inputs["usable"] = np.flatnonzero(~store.skipped)
        if needs_pairs:
            with PairTable(section.get("pairs", str)) as pairs:
                pairs.check_store(store)
                inputs["pair_offsets"], inputs["pair_partners"] = pairs.offsets, pairs.file["partner"][:]
    if needs_targets:
        inputs["targets"] = TeacherTargets(store_path)
    return inputs


@click.command("train")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(params_path: str, name: str, quiet: bool) -> None:
    """Train one student from the cached teacher embeddings (and mined pairs); export it to ONNX."""
    from pipeline.train import MODEL, train as train_student
    from stages.training import train_config_from

    section = student_section(params_path, name)
    config = train_config_from(section)
    inputs = training_inputs(section, config.distillation.uses_teacher, config.sampler == "pairs")
    dataset = inputs.pop("dataset")
    result = train_student(config, dataset, Path(section.get("out_root", str)) / name, progress=not quiet, **inputs)
    resumed = f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""
    click.echo(f"student {name}: {result.out_dir / MODEL}{resumed}, {result.metrics['samples_per_second']:.0f} images/s")
