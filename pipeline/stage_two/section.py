"""Training one params.yaml section (a student's merged `train`, or `teacher`): the one call of
`facekd train` and `facekd teacher`, so both read their inputs and choose torch.compile alike."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.data.open import open_dataset
from pipeline.stage_two.compile_choice import compile_where_safe
from pipeline.stage_two.config import TeacherSection, TrainSection
from pipeline.stage_two.train import TrainResult, train
from pipeline.stage_two.training_data import load_section_inputs


def train_section(
    section: TrainSection | TeacherSection, out_dir: str | Path, *, progress: bool, report: Callable[[str], None]
) -> TrainResult:
    """Train (or resume) `section`'s backbone into `out_dir`.

    A student section also reads the teacher's store (and mined pairs) its settings use; the
    teacher trains on its images alone. `report` gets the torch.compile choice, one line; a
    verdict that needs another process environment restarts this process (`compile_where_safe`).
    """
    config = section.training_config()
    if isinstance(section, TeacherSection):
        dataset, usable, arguments = open_dataset(section.dataset), None, {}
    else:
        inputs = load_section_inputs(section, [config])
        dataset, usable, arguments = inputs.dataset, inputs.usable, inputs.train_arguments()
    (config,) = compile_where_safe([config], dataset, usable, report)
    return train(
        config, dataset, out_dir, images_memory_bytes=section.images_memory_bytes, progress=progress, **arguments,
    )
