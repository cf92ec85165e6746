"""`facekd results`: the evaluated models' verification tables (with their deployment cost once the
latency report exists) and the offline plots, as what the command prints."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import RenderableType
from rich.table import Table

from pipeline.errors import FacekdError
from pipeline.evaluation.deployment import deployment_cells, deployment_columns, deployment_notes
from pipeline.evaluation.evaluate import METRICS, ROC_DIR
from pipeline.evaluation.report import plot_accuracy_latency, plot_roc_curves, plot_training_curves

TRAIN_LOG = "train_log.csv"  # in a training folder, as `pipeline.stage_two.train` writes it (without importing torch)


def summarise_results(
    students: list[str],
    students_root: str | Path,
    teacher_root: str | Path | None,
    eval_root: str | Path,
    latency_path: str | Path | None,
    out_dir: str | Path,
) -> list[RenderableType]:
    """Tables and lines to print, in order; the plots are written to `out_dir`.

    `teacher_root`: the default teacher's training folder (its log), None with a teacher of your
    own. `latency_path`: the latency report, None (or a missing file) before `facekd latency`.
    """
    train_root, eval_root, out_dir = Path(students_root), Path(eval_root), Path(out_dir)
    teacher = {"teacher": Path(teacher_root)} if teacher_root is not None else {}
    trained = teacher | {name: train_root / name for name in students}
    names = ["teacher", *(model for name in students for model in (name, f"{name}.int8"))]  # each int8 under its fp32
    evaluated = {name: eval_root / name for name in names if (eval_root / name / METRICS).is_file()}
    has_latency = latency_path is not None and Path(latency_path).is_file()
    latency = json.loads(Path(latency_path).read_text()) if has_latency else None
    columns = deployment_columns(latency) if latency else {}
    if not evaluated:
        raise FacekdError(f"{eval_root}: no evaluated models yet; run `dvc repro` first")
    printed: list[RenderableType] = []
    pair_sets = sorted({s for name in evaluated for s in json.loads((evaluated[name] / METRICS).read_text())})
    # Two tables, not one wide one: side by side they no longer fit an 80-column terminal.
    for pair_set in pair_sets:
        table = Table(title=f"verification on {pair_set}")
        for column in ("model", "accuracy", "± std", "TAR@1e-2", "TAR@1e-3", "XNorm"):
            table.add_column(column, justify="left" if column == "model" else "right")
        curves, accuracy = {}, {}
        for name, folder in evaluated.items():
            metrics = json.loads((folder / METRICS).read_text()).get(pair_set)
            if metrics is None:
                continue
            table.add_row(
                name, f"{metrics['accuracy']:.4f}", f"{metrics['accuracy_std']:.4f}",
                _tar(metrics, "0.01"), _tar(metrics, "0.001"), f"{metrics['xnorm']:.2f}",
            )
            curves[name] = folder / ROC_DIR / f"{pair_set}.csv"
            accuracy[name] = metrics["accuracy"]
        printed.append(table)
        if latency:
            printed.extend(deployment_notes(latency, accuracy, students))
            points = {
                name: (latency["models"][name]["batch1_1thread"]["median_ms"], accuracy[name])
                for name in accuracy if name in latency["models"]
            }
            tradeoff_png = plot_accuracy_latency(points, out_dir / f"accuracy_latency_{pair_set}.png", f"accuracy vs latency on {pair_set}")
            printed.append(f"accuracy vs latency: {tradeoff_png}")
        roc_png = plot_roc_curves(curves, out_dir / f"roc_{pair_set}.png", f"ROC on {pair_set}")
        printed.append(f"ROC curves: {roc_png}")
    if latency:
        runs = latency["settings"]["batch1_1thread"]["runs"]
        table = Table(title=f"deployment cost (ONNX Runtime, CPU, median of {runs} runs)")
        for column in ("model", *columns.values()):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name in names:
            if name in latency["models"]:
                table.add_row(name, *deployment_cells(latency["models"][name], columns))
        printed.append(table)
    logs = {name: folder / TRAIN_LOG for name, folder in trained.items() if (folder / TRAIN_LOG).is_file()}
    if logs:
        printed.append(f"training curves: {plot_training_curves(logs, out_dir / 'training_loss.png')}")
    printed.append(f"metrics: {', '.join(str(folder / METRICS) for folder in evaluated.values())} (also `dvc metrics show`)")
    if latency:
        printed.append(f"latency: {latency_path}")
    return printed


def _tar(metrics: dict, far: str) -> str:
    value = metrics.get(f"tar_at_far_{far}")
    return "-" if value is None else f"{value:.4f}"
