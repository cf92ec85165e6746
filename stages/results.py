"""`facekd results`: the teacher's and every student's verification numbers, and offline plots."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("results")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--out", "out_dir", default="data/report", show_default=True, help="Folder for the PNG plots.")
def results(params_path: str, out_dir: str) -> None:
    """Print a table of the evaluated models (with latency, size and multiply-adds once `facekd latency`
    has run) and draw ROC, training and accuracy-vs-latency curves as PNG."""
    from rich.console import Console

    from pipeline.evaluation.results import summarise_results

    settings = load_settings(params_path)
    train, evaluation = required(settings, params_path, "train", "evaluate")
    printed = summarise_results(
        list(settings.students),
        train.out_root,
        settings.teacher.out if settings.teacher else None,  # the default teacher's training folder (its log)
        evaluation.out_root,
        settings.latency.out if settings.latency else None,
        out_dir,
    )
    console = Console()
    for item in printed:
        console.print(item)
