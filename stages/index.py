"""`facekd index`: the FAISS index over the teacher embeddings, and every image's k nearest neighbours."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command("index")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Local dask worker processes searching the index, or the streamed exact search (0: no dask). Overrides index.workers.")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler, e.g. tcp://host:8786.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index(params_path: str, workers: int | None, scheduler: str | None, quiet: bool) -> None:
    """Build the index (params: index.factory) and search all-vs-all kNN into index.knn."""
    from pipeline.stage_one.index import SearchBreadth
    from pipeline.stage_one.neighbours import find_neighbours
    from pipeline.stage_one.recall_target import recall_report

    config = required(load_settings(params_path), params_path, "index")
    if workers is not None:
        config = config.model_copy(update={"workers": workers})
    search = find_neighbours(config, settings_file=params_path, progress=not quiet, scheduler=scheduler)
    knn = search.knn
    if search.index is None:
        click.echo(f"{config.out}: holds no vectors (a Flat index of {search.flat_index_bytes / (1 << 30):.1f} GB exceeds index.memory_gb)")
        click.echo(f"{knn.knn_path}: {knn.k} nearest neighbours of {knn.num_queries} images, "
                   f"exact search streamed from the store on {knn.device}")
        return
    click.echo(f"{config.out}: {search.index.factory} index of {search.index.ntotal} images ({search.index.view} view)")
    if search.index.search_breadth != SearchBreadth():
        click.echo(f"{config.out}: {recall_report(search.index.search_breadth, config.knn_k, config.recall_target)}")
    click.echo(f"{knn.knn_path}: {knn.k} nearest neighbours of {knn.num_queries} images, searched on {knn.device}")
