"""`facekd train --student NAME`: stage two for one student of params.yaml `students`."""
from __future__ import annotations

from pathlib import Path

import click

from stages.params import Section, load_params, load_section


def student_section(params_path: str, name: str) -> Section:
    """`train` defaults with `students.<name>` merged on top."""
    from stages.training import deep_merge

    defaults = load_section(params_path, "train")
    students = load_params(params_path).get("students") or {}
    if name not in students:
        raise click.ClickException(f"{params_path}: students has no student {name!r} (known: {', '.join(students) or 'none'})")
    return Section(Path(params_path), f"students.{name}", deep_merge(defaults.values, students[name] or {}))


@click.command("train")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--student", "name", required=True, help="Name of the student in params.yaml `students`.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(params_path: str, name: str, quiet: bool) -> None:
    """Train one student from the cached teacher embeddings (and mined pairs); export it to ONNX."""
    import numpy as np

    from pipeline.data.open import open_dataset
    from pipeline.mining import PairTable
    from pipeline.store import EmbeddingStore
    from pipeline.train import MODEL, train as train_student
    from pipeline.training_data import TeacherTargets
    from stages.training import train_config_from

    section = student_section(params_path, name)
    config = train_config_from(section)
    dataset = open_dataset(section.get("dataset", str))
    store_path = section.get("store", str)
    with EmbeddingStore(store_path) as store:
        store.check_matches({"dataset_kind": dataset.kind, "dataset_fingerprint": dataset.fingerprint()})
        usable = np.flatnonzero(~store.skipped)
        pair_offsets = pair_partners = None
        if config.sampler == "pairs":
            with PairTable(section.get("pairs", str)) as pairs:
                pairs.check_store(store)
                pair_offsets, pair_partners = pairs.offsets, pairs.file["partner"][:]
    result = train_student(
        config, dataset, Path(section.get("out_root", str)) / name,
        targets=TeacherTargets(store_path) if config.distillation.uses_teacher else None,
        usable=usable, pair_offsets=pair_offsets, pair_partners=pair_partners, progress=not quiet,
    )
    resumed = f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""
    click.echo(f"student {name}: {result.out_dir / MODEL}{resumed}, {result.metrics['samples_per_second']:.0f} images/s")
