"""`facekd evaluate` and `facekd make-bin`: the field's verification protocol."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.data.config import VerificationConfig
from stages.params import load_settings, required


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
    from pipeline.evaluation.inputs import load_pair_sets, open_evaluated_model
    from pipeline.face_model import Preprocessing

    settings = load_settings(params_path)
    config = required(settings, params_path, "evaluate")
    # a teacher of your own may expect other pixels (e.g. BGR), which `embed.preprocessing` describes
    preprocessing = Preprocessing(**required(settings, params_path, "embed").preprocessing.model_dump()) if as_teacher else None
    model = open_evaluated_model(config, model_path, preprocessing)
    pair_sets = load_pair_sets(config.pairs, f"{params_path}: evaluate.pairs")
    reports = {name: evaluate_pairs(model, pairs, config.folds) for name, pairs in pair_sets.items()}
    write_evaluation(reports, Path(out_dir) / "metrics.json", Path(out_dir) / "roc")
    for name, report in reports.items():
        accuracy = f"accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}"
        tars = ", ".join(f"TAR@FAR={far}: {tar:.4f}" for far, tar in report["tar_at_far"].items() if tar is not None)
        click.echo(f"{model_path} on {name}: " + "; ".join(part for part in (accuracy, tars) if part))


@click.command("make-bin")
@click.argument("dataset", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--pairs", "num_pairs", default=VerificationConfig.model_fields["num_pairs"].default, show_default=True,
              help="Number of pairs (half same, half different).")
@click.option("--seed", default=VerificationConfig.model_fields["seed"].default, show_default=True, help="Seed of the pair drawing.")
def make_bin(dataset: str, out: str, num_pairs: int, seed: int) -> None:
    """Build an insightface-style verification .bin from an image folder (or RecordIO set)."""
    from pipeline.data.open import open_dataset
    from pipeline.data.verification_bin import make_bin_from_dataset

    make_bin_from_dataset(open_dataset(dataset), out, num_pairs, seed)
    click.echo(f"{out}: {num_pairs} pairs ({num_pairs // 2} same, {num_pairs // 2} different) from {dataset}")
