"""`facekd embed`: stage one, the teacher's single pass over the training images."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("embed")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Local dask worker processes (0: no dask). Overrides embed.workers.")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler, e.g. tcp://host:8786.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(params_path: str, workers: int | None, scheduler: str | None, quiet: bool) -> None:
    """Embed every image (and its flip) with the ONNX teacher into the HDF5 store."""
    from pipeline.stage_one.embed import embed_images

    settings = load_settings(params_path)
    config = required(settings, params_path, "embed")
    if workers is not None:
        config = config.model_copy(update={"workers": workers})
    summary = embed_images(
        config, knn_k=settings.index.knn_k if settings.index else None, settings_file=params_path,
        scheduler=scheduler, progress=not quiet,
    )
    if summary.up_to_date:
        click.echo(f"{summary.store_path}: already complete for this teacher and dataset; nothing to do")
        return
    resumed = f", resumed {summary.resumed_blocks} finished blocks" if summary.resumed_blocks else ""
    skipped = f", skipped {summary.num_skipped} undecodable images" if summary.num_skipped else ""
    click.echo(f"{summary.store_path}: {summary.num_images} images embedded{resumed}{skipped}")
