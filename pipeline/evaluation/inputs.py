"""What evaluation reads: the pair sets of `evaluate.pairs`, the model to evaluate (with the
preprocessing it was trained with), and the models a deployment compares."""
from __future__ import annotations

from pathlib import Path

from pipeline.data.verification_bin import VerificationPairs, load_pair_set
from pipeline.errors import FacekdError
from pipeline.evaluation.config import EvaluateConfig
from pipeline.face_model import OnnxFaceModel, Preprocessing
from pipeline.stage_one.config import PreprocessingConfig

MODEL = "model.onnx"  # a student's fp32 model, in its training folder
INT8_MODEL = "model.int8.onnx"  # its int8 model, beside it


def load_pair_sets(pairs: str, setting: str) -> dict[str, VerificationPairs]:
    """The pair sets at `pairs` by name (file stem): a `.bin` file, a pair list, or a folder whose
    `.bin` files and `.txt` pair lists are each a pair set; names must be unique. `setting` names
    where `pairs` came from, for the messages."""
    path = Path(pairs)
    if path.is_dir():
        paths = sorted(item for item in path.iterdir() if item.is_file() and item.suffix.lower() in (".bin", ".txt"))
        if not paths:
            raise FacekdError(f"{setting} is {pairs!r}: a folder without .bin files or .txt pair lists")
    elif path.is_file():
        paths = [path]
    else:
        raise FacekdError(f"{setting} is {pairs!r}, which does not exist; expected a .bin file, a pair list or a folder of them")
    names = [item.stem for item in paths]
    if len(set(names)) != len(names):
        raise FacekdError(f"{setting}: two pair sets share a file name ({names}); rename one")
    return {name: load_pair_set(item) for name, item in zip(names, paths)}


def open_evaluated_model(
    config: EvaluateConfig, model_path: str | Path, teacher_preprocessing: PreprocessingConfig | None = None
) -> OnnxFaceModel:
    """The model to evaluate: a teacher with its own preprocessing (`embed.preprocessing`), a student
    (None) with its training convention (RGB, (x - 127.5) / 127.5; a teacher of your own may expect
    something else, e.g. BGR)."""
    preprocessing = Preprocessing(**teacher_preprocessing.model_dump()) if teacher_preprocessing else Preprocessing()
    return OnnxFaceModel(
        model_path, preprocessing, device=config.device, batch_size=config.batch_size, resize=config.resize,
    )


def deployed_models(teacher: str | Path, students_root: str | Path, students: list[str]) -> dict[str, Path]:
    """The teacher, each student's fp32 model and its int8 model (`<name>.int8`), by name."""
    models = {"teacher": Path(teacher)}
    for name in students:
        models[name] = Path(students_root) / name / MODEL
        models[f"{name}.int8"] = Path(students_root) / name / INT8_MODEL
    return models
