"""`facekd mine`: hard negatives and hard positives from the kNN result, into the pair table."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("mine")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Local dask worker processes mining the hard positives (0: no dask). Overrides mine.workers.")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler, e.g. tcp://host:8786.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def mine(params_path: str, workers: int | None, scheduler: str | None, quiet: bool) -> None:
    """Write the pair table, mining_summary.json, the similarity histogram and the suspicious pairs."""
    from pipeline.stage_one.miners import mine_and_report

    config = required(load_settings(params_path), params_path, "mine")
    if workers is not None:
        config = config.model_copy(update={"workers": workers})
    summary = mine_and_report(config, progress=not quiet, scheduler=scheduler)
    click.echo(
        f"{summary.pairs_path}: {summary.negatives.count} hard negatives and {summary.positives.count} hard positives "
        f"of {summary.num_anchors} images; {summary.suspicious_pairs} suspicious pairs "
        f"(different identities, similarity >= {summary.suspicious_threshold}) in {config.suspicious}"
    )
    if scheduler or config.workers:
        where = f"the dask cluster at {scheduler}" if scheduler else f"{config.workers} local dask worker processes"
        click.echo(f"hard positives mined on {where}")
