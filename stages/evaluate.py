"""`facekd evaluate` and `facekd make-bin`: the field's verification protocol."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.errors import FacekdError
from stages.params import DEVICES, Section, load_section, preprocessing_from

if TYPE_CHECKING:
    from pipeline.data.verification_bin import VerificationPairs
    from pipeline.face_model import OnnxFaceModel


def open_model(params_path: str, model_path: str | Path, as_teacher: bool) -> "OnnxFaceModel":
    """The model to evaluate: a teacher with `embed.preprocessing`, a student with its training convention.

    Students are always trained on RGB, (x - 127.5) / 127.5; a teacher of your own may expect
    something else (e.g. BGR), which `embed.preprocessing` already describes.
    """
    from pipeline.face_model import OnnxFaceModel, Preprocessing

    section = load_section(params_path, "evaluate")
    preprocessing = preprocessing_from(load_section(params_path, "embed").sub("preprocessing")) if as_teacher else Preprocessing()
    return OnnxFaceModel(
        model_path, preprocessing, device=section.choice("device", DEVICES, "auto"),
        batch_size=section.positive("batch_size"), resize=section.get("resize", bool, False),
    )


def pair_sets(section: Section) -> dict[str, "VerificationPairs"]:
    """The pair sets of `evaluate.pairs` by name (file stem); names must be unique.

    `evaluate.pairs` is one path, not a list, because dvc.yaml's evaluate stages depend on it and
    DVC cannot expand a list there: a `.bin` or a pair list, or a folder whose `.bin` files and
    `.txt` pair lists are each a pair set.
    """
    from pipeline.data.verification_bin import load_pair_set

    value = section.values.get("pairs")
    if not isinstance(value, str):
        raise FacekdError(
            f"{section.where('pairs')} is {value!r}; expected one path: a .bin file, a pair list, or a folder of them"
        )
    path = Path(value)
    if path.is_dir():
        paths = sorted(item for item in path.iterdir() if item.is_file() and item.suffix.lower() in (".bin", ".txt"))
        if not paths:
            raise FacekdError(f"{section.where('pairs')} is {value!r}: a folder without .bin files or .txt pair lists")
    elif path.is_file():
        paths = [path]
    else:
        raise FacekdError(f"{section.where('pairs')} is {value!r}, which does not exist; expected a .bin file, a pair list or a folder of them")
    names = [item.stem for item in paths]
    if len(set(names)) != len(names):
        raise FacekdError(f"{section.where('pairs')}: two pair sets share a file name ({names}); rename one")
    return {name: load_pair_set(item) for name, item in zip(names, paths)}


@click.command("evaluate")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--onnx", "model_path", required=True, type=click.Path(dir_okay=False), help="The ONNX model to evaluate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for metrics.json and roc/.")
@click.option("--as-teacher", is_flag=True, help="Preprocess as `embed.preprocessing` (default: the students' convention).")
def evaluate(params_path: str, model_path: str, out_dir: str, as_teacher: bool) -> None:
    """Verification accuracy, TAR@FAR, XNorm and ROC of a model on every pair set of `evaluate.pairs`.

    A pair set is an insightface `.bin` file, or a text file of `path1 path2 0|1` lines (1 = same
    identity) with paths relative to the text file's folder.
    """
    from pipeline.evaluation.evaluate import evaluate_pairs, write_evaluation

    section = load_section(params_path, "evaluate")
    model = open_model(params_path, model_path, as_teacher)
    folds = section.positive("folds")
    reports = {name: evaluate_pairs(model, pairs, folds) for name, pairs in pair_sets(section).items()}
    write_evaluation(reports, Path(out_dir) / "metrics.json", Path(out_dir) / "roc")
    for name, report in reports.items():
        accuracy = f"accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}"
        tars = ", ".join(f"TAR@FAR={far}: {tar:.4f}" for far, tar in report["tar_at_far"].items() if tar is not None)
        click.echo(f"{model_path} on {name}: " + "; ".join(part for part in (accuracy, tars) if part))


@click.command("make-bin")
@click.argument("dataset", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--pairs", "num_pairs", default=6000, show_default=True, help="Number of pairs (half same, half different).")
@click.option("--seed", default=0, show_default=True, help="Seed of the pair drawing.")
def make_bin(dataset: str, out: str, num_pairs: int, seed: int) -> None:
    """Build an insightface-style verification .bin from an image folder (or RecordIO set)."""
    from pipeline.data.open import open_dataset
    from pipeline.data.verification_bin import make_bin_from_dataset

    make_bin_from_dataset(open_dataset(dataset), out, num_pairs, seed)
    click.echo(f"{out}: {num_pairs} pairs ({num_pairs // 2} same, {num_pairs // 2} different) from {dataset}")
