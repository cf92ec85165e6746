"""`facekd results`: the teacher's and every student's verification numbers, and offline plots."""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.params import load_params, load_section


def deployment_columns(report: dict) -> dict[str, str]:
    """Latency-report setting (or field) -> column title, in table order."""
    throughput = next(name for name, setting in report["settings"].items() if setting["batch_size"] > 1)
    batch = report["settings"][throughput]["batch_size"]
    return {
        "batch1_1thread": "b1 1 thr ms", "batch1_all_threads": "b1 all ms",
        throughput: f"b{batch} img/s", "size_bytes": "MB", "multiply_adds": "M MACs",
    }


def deployment_cells(model: dict, columns: dict[str, str]) -> list[str]:
    """The latency, throughput, size and multiply-add cells of one timed model."""
    cells = []
    for key in columns:
        if key == "size_bytes":
            cells.append(f"{model[key] / 1e6:.2f}")
        elif key == "multiply_adds":
            cells.append(f"{model[key] / 1e6:.1f}")
        elif key.startswith("batch1"):
            cells.append(f"{model[key]['median_ms']:.3f}")
        else:
            cells.append(f"{model[key]['images_per_second']:.0f}")
    return cells


def int8_notes(latency: dict, accuracy: dict[str, float], students: list[str]) -> list[str]:
    """Per student: int8 against fp32 in accuracy, batch-1 one-thread latency and size, said plainly."""
    notes = []
    for name in students:
        fp32, int8 = latency["models"].get(name), latency["models"].get(f"{name}.int8")
        if fp32 is None or int8 is None:
            continue
        fp32_ms, int8_ms = fp32["batch1_1thread"]["median_ms"], int8["batch1_1thread"]["median_ms"]
        speed = (f"{fp32_ms / int8_ms:.2f}x faster" if int8_ms < fp32_ms else f"{int8_ms / fp32_ms:.2f}x SLOWER on this CPU")
        note = f"{name}.int8 vs fp32: {speed} ({int8_ms:.3f} vs {fp32_ms:.3f} ms, batch 1, 1 thread), " \
               f"{fp32['size_bytes'] / int8['size_bytes']:.1f}x smaller"
        if name in accuracy and f"{name}.int8" in accuracy:
            note += f", accuracy {100 * (accuracy[f'{name}.int8'] - accuracy[name]):+.2f} points"
        notes.append(note)
    return notes


@click.command("results")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--out", "out_dir", default="data/report", show_default=True, help="Folder for the PNG plots.")
def results(params_path: str, out_dir: str) -> None:
    """Print a table of the evaluated models (with latency, size and multiply-adds once `facekd latency`
    has run) and draw ROC, training and accuracy-vs-latency curves as PNG."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.evaluation.report import plot_accuracy_latency, plot_roc_curves, plot_training_curves

    params = load_params(params_path)
    students = list((params.get("students") or {}).keys())
    train_root = Path(load_section(params_path, "train").get("out_root", str))
    # the default teacher's training folder (its log); absent with a teacher of your own
    teacher_root = Path((params.get("teacher") or {}).get("out", "-"))
    eval_root = load_section(params_path, "evaluate").get("out_root", str)
    models = {"teacher": teacher_root} | {name: train_root / name for name in students}
    names = ["teacher", *(model for name in students for model in (name, f"{name}.int8"))]  # each int8 under its fp32
    console = Console()
    evaluated = {name: Path(eval_root) / name for name in names if (Path(eval_root) / name / "metrics.json").is_file()}
    latency_path = Path((params.get("latency") or {}).get("out", "-"))
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
