"""`facekd evaluate` and `facekd make-bin`: the field's verification protocol."""
from __future__ import annotations

from pathlib import Path

import click

from stages.params import load_section


@click.command("evaluate")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--onnx", "model_path", required=True, type=click.Path(dir_okay=False), help="The ONNX model to evaluate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for metrics.json and roc/.")
def evaluate(params_path: str, model_path: str, out_dir: str) -> None:
    """Verification accuracy, TAR@FAR, XNorm and ROC of a model on every pair set of `evaluate.pairs`.

    A pair set is an insightface `.bin` file, or a text file of `path1 path2 0|1` lines (1 = same
    identity) with paths relative to the text file's folder.
    """
    from pipeline.data.verification_bin import load_pair_set
    from pipeline.evaluate import evaluate_pairs, write_evaluation
    from pipeline.teacher import OnnxTeacher, Preprocessing

    section = load_section(params_path, "evaluate")
    preprocessing = section.sub("preprocessing")
    model = OnnxTeacher(
        model_path,
        Preprocessing(
            preprocessing.choice("channel_order", ("rgb", "bgr")), preprocessing.get("mean", float), preprocessing.get("std", float)
        ),
        device=section.choice("device", ("auto", "cpu", "cuda"), "auto"),
        batch_size=section.positive("batch_size"),
    )
    folds = section.positive("folds")
    reports = {Path(path).stem: evaluate_pairs(model, load_pair_set(path), folds) for path in section.get("pairs", list)}
    write_evaluation(reports, Path(out_dir) / "metrics.json", Path(out_dir) / "roc")
    for name, report in reports.items():
        tars = ", ".join(f"TAR@FAR={far}: {tar:.4f}" for far, tar in report["tar_at_far"].items() if tar is not None)
        click.echo(f"{model_path} on {name}: accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}; {tars}")


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
