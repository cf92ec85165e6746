"""`facekd results`: the teacher's and every student's verification numbers, and offline plots."""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.params import load_settings, required


@click.command("results")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--out", "out_dir", default="data/report", show_default=True, help="Folder for the PNG plots.")
def results(params_path: str, out_dir: str) -> None:
    """Print a table of the evaluated models (with latency, size and multiply-adds once `facekd latency`
    has run) and draw ROC, training and accuracy-vs-latency curves as PNG."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.evaluation.deployment import deployment_cells, deployment_columns, int8_notes
    from pipeline.evaluation.report import plot_accuracy_latency, plot_roc_curves, plot_training_curves

    settings = load_settings(params_path)
    train, evaluation = required(settings, params_path, "train", "evaluate")
    students = list(settings.students)
    train_root = Path(train.out_root)
    # the default teacher's training folder (its log); absent with a teacher of your own
    teacher_root = Path(settings.teacher.out if settings.teacher else "-")
    eval_root = evaluation.out_root
    models = {"teacher": teacher_root} | {name: train_root / name for name in students}
    names = ["teacher", *(model for name in students for model in (name, f"{name}.int8"))]  # each int8 under its fp32
    console = Console()
    evaluated = {name: Path(eval_root) / name for name in names if (Path(eval_root) / name / "metrics.json").is_file()}
    latency_path = Path(settings.latency.out if settings.latency else "-")
    latency = json.loads(latency_path.read_text()) if latency_path.is_file() else None
    columns = deployment_columns(latency) if latency else {}
    if not evaluated:
        raise click.ClickException(f"{eval_root}: no evaluated models yet; run `dvc repro` first")
    pair_sets = sorted({s for name in evaluated for s in json.loads((evaluated[name] / "metrics.json").read_text())})
    # Two tables, not one wide one: side by side they no longer fit an 80-column terminal.
    for pair_set in pair_sets:
        table = Table(title=f"verification on {pair_set}")
        for column in ("model", "accuracy", "± std", "TAR@1e-2", "TAR@1e-3", "XNorm"):
            table.add_column(column, justify="left" if column == "model" else "right")
        curves, accuracy = {}, {}
        for name, folder in evaluated.items():
            metrics = json.loads((folder / "metrics.json").read_text()).get(pair_set)
            if metrics is None:
                continue
            table.add_row(
                name, f"{metrics['accuracy']:.4f}", f"{metrics['accuracy_std']:.4f}",
                _tar(metrics, "0.01"), _tar(metrics, "0.001"), f"{metrics['xnorm']:.2f}",
            )
            curves[name] = folder / "roc" / f"{pair_set}.csv"
            accuracy[name] = metrics["accuracy"]
        console.print(table)
        if latency:
            for note in int8_notes(latency, accuracy, students):
                console.print(note)
            points = {
                name: (latency["models"][name]["batch1_1thread"]["median_ms"], accuracy[name])
                for name in accuracy if name in latency["models"]
            }
            tradeoff_png = plot_accuracy_latency(points, Path(out_dir) / f"accuracy_latency_{pair_set}.png", f"accuracy vs latency on {pair_set}")
            console.print(f"accuracy vs latency: {tradeoff_png}")
        roc_png = plot_roc_curves(curves, Path(out_dir) / f"roc_{pair_set}.png", f"ROC on {pair_set}")
        console.print(f"ROC curves: {roc_png}")
    if latency:
        runs = latency["settings"]["batch1_1thread"]["runs"]
        table = Table(title=f"deployment cost (ONNX Runtime, CPU, median of {runs} runs)")
        for column in ("model", *columns.values()):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name in names:
            if name in latency["models"]:
                table.add_row(name, *deployment_cells(latency["models"][name], columns))
        console.print(table)
    logs = {name: folder / "train_log.csv" for name, folder in models.items() if (folder / "train_log.csv").is_file()}
    if logs:
        console.print(f"training curves: {plot_training_curves(logs, Path(out_dir) / 'training_loss.png')}")
    console.print(f"metrics: {', '.join(str(folder / 'metrics.json') for folder in evaluated.values())} (also `dvc metrics show`)")
    if latency:
        console.print(f"latency: {latency_path}")


def _tar(metrics: dict, far: str) -> str:
    value = metrics.get(f"tar_at_far_{far}")
    return "-" if value is None else f"{value:.4f}"
