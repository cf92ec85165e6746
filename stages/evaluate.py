"""`facekd evaluate`: the field's verification protocol."""
from __future__ import annotations

import click

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
    from pipeline.evaluation.evaluate import evaluate_model

    settings = load_settings(params_path)
    config = required(settings, params_path, "evaluate")
    # a teacher of your own may expect other pixels (e.g. BGR), which `embed.preprocessing` describes
    teacher_preprocessing = required(settings, params_path, "embed").preprocessing if as_teacher else None
    reports = evaluate_model(
        config, model_path, out_dir, teacher_preprocessing=teacher_preprocessing, settings_file=params_path,
    )
    for name, report in reports.items():
        accuracy = f"accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}"
        tars = ", ".join(f"TAR@FAR={far}: {tar:.4f}" for far, tar in report["tar_at_far"].items() if tar is not None)
        click.echo(f"{model_path} on {name}: " + "; ".join(part for part in (accuracy, tars) if part))
