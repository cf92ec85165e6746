"""`facekd ablation`: method.md's ablation rows (or a tuning sweep) over several seeds, as a table."""
from __future__ import annotations

import click

from pipeline.settings import SWEEPS
from stages.params import load_settings, required


@click.command("ablation")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--section", "section_name", default="ablation", show_default=True, type=click.Choice(SWEEPS),
              help="Section with `rows` (overrides of `train`), `seeds`, `out_root`, `table`.")
@click.option("--rows", "only_rows", default=None, help="Comma-separated subset of the rows to run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ablation(params_path: str, section_name: str, only_rows: str | None, quiet: bool) -> None:
    """Train every row under every seed, evaluate on the first `evaluate.pairs` set, write a markdown table."""
    from pipeline.evaluation.ablation import run_ablation

    settings = load_settings(params_path)  # once: every row below is already merged onto `train` and checked
    sweep, evaluation, embed = required(settings, params_path, section_name, "evaluate", "embed")
    table = run_ablation(
        sweep, evaluation, embed.teacher, embed.preprocessing,
        only_rows=only_rows.split(",") if only_rows else None, section_name=section_name, settings_file=params_path,
        progress=not quiet, log=click.echo, report=lambda line: click.echo(line, err=True),
    )
    click.echo(table)
    click.echo(f"table written to {sweep.table}")
