"""`facekd embed`: stage one, the teacher's single pass over the training images."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.errors import FacekdError
from stages.params import DEVICES, load_params, load_section, preprocessing_from


@click.command("embed")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--workers", type=int, default=None, help="Local dask worker processes (0: no dask). Overrides embed.workers.")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler, e.g. tcp://host:8786.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(params_path: str, workers: int | None, scheduler: str | None, quiet: bool) -> None:
    """Embed every image (and its flip) with the ONNX teacher into the HDF5 store."""
    from pipeline.data.open import DATASET_FORMATS, open_dataset
    from pipeline.stage_one.embed import TeacherConfig, embed_dataset
    from pipeline.stage_one.store import STORE_DTYPES

    section = load_section(params_path, "embed")
    dataset_path = section.get("dataset", str)
    dataset = open_dataset(dataset_path, section.choice("dataset_format", DATASET_FORMATS, "auto"))
    check_neighbour_counts(params_path, dataset_path, len(dataset))
    config = TeacherConfig(
        path=str(Path(section.get("teacher", str)).resolve()),  # absolute: workers may run elsewhere
        preprocessing=preprocessing_from(section.sub("preprocessing")),
        device=section.choice("device", DEVICES, "auto"),
        threads=section.get("threads_per_worker", int, 1),
        batch_size=section.positive("batch_size"),
        resize=section.get("resize", bool, False),
    )
    summary = embed_dataset(
        dataset,
        config,
        section.get("store", str),
        dataset_root=dataset_path,
        block_size=section.positive("block_size"),
        workers=section.get("workers", int) if workers is None else workers,
        scheduler=scheduler,
        skip_corrupt=section.choice("on_corrupt", ("error", "skip")) == "skip",
        embedding_dtype=section.choice("dtype", STORE_DTYPES, "float16"),
        progress=not quiet,
    )
    if summary.up_to_date:
        click.echo(f"{summary.store_path}: already complete for this teacher and dataset; nothing to do")
        return
    resumed = f", resumed {summary.resumed_blocks} finished blocks" if summary.resumed_blocks else ""
    skipped = f", skipped {summary.num_skipped} undecodable images" if summary.num_skipped else ""
    click.echo(f"{summary.store_path}: {summary.num_images} images embedded{resumed}{skipped}")


def check_neighbour_counts(params_path: str, dataset_path: str, num_images: int) -> None:
    """Refuse `index.knn_k` and `mine.hard_negatives_per_anchor` the dataset cannot satisfy.

    The index and mine stages would find out only after the teacher's pass over every image;
    checked here, the mistake costs nothing. A params file without those sections (embedding
    alone) has nothing to check.
    """
    params = load_params(params_path)
    if "index" not in params:
        return
    index = load_section(params_path, "index")
    knn_k = index.positive("knn_k")
    if knn_k >= num_images:
        raise FacekdError(
            f"{index.where('knn_k')} is {knn_k}; expected at most {num_images - 1}: {dataset_path} has "
            f"{num_images} images, and each image's neighbours are the other images"
        )
    if "mine" not in params:
        return
    mine = load_section(params_path, "mine")
    hard_negatives = mine.positive("hard_negatives_per_anchor")
    if hard_negatives > knn_k:
        raise FacekdError(
            f"{mine.where('hard_negatives_per_anchor')} is {hard_negatives}; expected at most index.knn_k = {knn_k} "
            "(hard negatives are mined among each image's knn_k nearest neighbours)"
        )
