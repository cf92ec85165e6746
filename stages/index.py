"""`facekd index`: the FAISS index over the teacher embeddings, and every image's k nearest neighbours."""
from __future__ import annotations

import click

from stages.params import load_section


@click.command("index")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index(params_path: str, quiet: bool) -> None:
    """Build the index (params: index.factory) and search all-vs-all kNN into index.knn."""
    from pipeline.stage_one.exact_knn import search_exact_streamed
    from pipeline.stage_one.index import DEVICES, VIEWS, build_index, search_knn, usable_rows
    from pipeline.stage_one.store import EmbeddingStore

    section = load_section(params_path, "index")
    index_path = section.get("out", str)
    block_size = section.positive("block_size")
    threads = section.get("threads", int, 0)
    factory = section.get("factory", str, "Flat")
    memory_bytes = int(section.positive("memory_gb", float, 8.0) * (1 << 30))
    with EmbeddingStore(section.get("store", str)) as store:
        flat_bytes = len(usable_rows(store)) * store.embedding_dim * 4
        if factory == "Flat" and flat_bytes > memory_bytes:
            # An exact index would not fit: the same search, with the vectors read from the store block by block.
            summary = search_exact_streamed(
                store, index_path, section.get("knn", str),
                k=section.positive("knn_k"),
                view=section.choice("view", VIEWS, "image"),
                device=section.choice("device", DEVICES, "auto"),
                memory_bytes=memory_bytes, block_size=block_size, threads=threads, progress=not quiet,
            )
            click.echo(f"{index_path}: holds no vectors (a Flat index of {flat_bytes / (1 << 30):.1f} GB exceeds index.memory_gb)")
            click.echo(f"{summary.knn_path}: {summary.k} nearest neighbours of {summary.num_queries} images, "
                       f"exact search streamed from the store on {summary.device}")
            return
        metadata = build_index(
            store, index_path,
            factory=factory,
            view=section.choice("view", VIEWS, "image"),
            train_sample=section.positive("train_sample"),
            seed=section.get("seed", int, 0),
            block_size=block_size, threads=threads, progress=not quiet,
        )
        summary = search_knn(
            store, index_path, section.get("knn", str),
            k=section.positive("knn_k"),
            device=section.choice("device", DEVICES, "auto"),
            nprobe=section.positive("nprobe"),
            ef_search=section.positive("ef_search"),
            block_size=block_size, threads=threads, progress=not quiet,
        )
    click.echo(f"{index_path}: {metadata.factory} index of {metadata.ntotal} images ({metadata.view} view)")
    click.echo(f"{summary.knn_path}: {summary.k} nearest neighbours of {summary.num_queries} images, searched on {summary.device}")
