"""`facekd results`: the teacher's and every student's verification numbers, and offline plots."""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.params import load_params, load_section


@click.command("results")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--out", "out_dir", default="data/report", show_default=True, help="Folder for the PNG plots.")
def results(params_path: str, out_dir: str) -> None:
    """Print a table of the evaluated models and draw ROC and training curves as PNG."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.report import plot_roc_curves, plot_training_curves

    params = load_params(params_path)
    students = list((params.get("students") or {}).keys())
    train_root = Path(load_section(params_path, "train").get("out_root", str))
    # the default teacher's training folder (its log); absent with a teacher of your own
    teacher_root = Path((params.get("teacher") or {}).get("out", "-"))
    eval_root = load_section(params_path, "evaluate").get("out_root", str)
    models = {"teacher": teacher_root} | {name: train_root / name for name in students}
    console = Console()
    evaluated = {name: Path(eval_root) / name for name in models if (Path(eval_root) / name / "metrics.json").is_file()}
    if not evaluated:
        raise click.ClickException(f"{eval_root}: no evaluated models yet; run `dvc repro` first")
    pair_sets = sorted({s for name in evaluated for s in json.loads((evaluated[name] / "metrics.json").read_text())})
    for pair_set in pair_sets:
        table = Table(title=f"verification on {pair_set}")
        for column in ("model", "accuracy", "± std", "TAR@FAR=1e-2", "TAR@FAR=1e-3", "XNorm"):
            table.add_column(column, justify="left" if column == "model" else "right")
        curves = {}
        for name, folder in evaluated.items():
            metrics = json.loads((folder / "metrics.json").read_text()).get(pair_set)
            if metrics is None:
                continue
            table.add_row(
                name, f"{metrics['accuracy']:.4f}", f"{metrics['accuracy_std']:.4f}",
                _tar(metrics, "0.01"), _tar(metrics, "0.001"), f"{metrics['xnorm']:.2f}",
            )
            curves[name] = folder / "roc" / f"{pair_set}.csv"
        console.print(table)
        roc_png = plot_roc_curves(curves, Path(out_dir) / f"roc_{pair_set}.png", f"ROC on {pair_set}")
        console.print(f"ROC curves: {roc_png}")
    logs = {name: folder / "train_log.csv" for name, folder in models.items() if (folder / "train_log.csv").is_file()}
    if logs:
        console.print(f"training curves: {plot_training_curves(logs, Path(out_dir) / 'training_loss.png')}")
    console.print(f"metrics: {', '.join(str(folder / 'metrics.json') for folder in evaluated.values())} (also `dvc metrics show`)")


def _tar(metrics: dict, far: str) -> str:
    value = metrics.get(f"tar_at_far_{far}")
    return "-" if value is None else f"{value:.4f}"
