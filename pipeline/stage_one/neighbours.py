"""`facekd index`: every image's nearest other images, through a FAISS index, or by exact search
streamed from the store when a Flat index would not fit in `index.memory_gb`."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import FacekdError
from pipeline.stage_one.config import IndexConfig
from pipeline.stage_one.exact_knn import memory_budget_bytes, search_exact_streamed
from pipeline.stage_one.index import IndexMetadata, KnnSummary, build_index, search_knn
from pipeline.stage_one.recall_target import tuned_search_breadth
from pipeline.stage_one.store import EmbeddingStore
from pipeline.stage_one.store_views import usable_rows


@dataclass(frozen=True)
class NeighbourSearch:
    """What `find_neighbours` did: the kNN file, and the index built (None: streamed, no vectors indexed)."""

    knn: KnnSummary
    index: IndexMetadata | None
    flat_index_bytes: int  # what a Flat index of the store would hold


def find_neighbours(
    config: IndexConfig, *, settings_file: str, progress: bool, scheduler: str | None = None
) -> NeighbourSearch:
    """Search `config.knn_k` neighbours of every usable image of `config.store` into `config.knn`.

    `knn_k` is checked against the store before any index is built; `settings_file` (where `config`
    came from) is named in that error. An approximate index is searched with the nprobe / ef_search that
    reaches `config.recall_target` (pipeline/stage_one/recall_target.py). Either search runs on
    `config.workers` local dask workers or the cluster at `scheduler` when given.
    """
    with EmbeddingStore(config.store) as store:
        usable = len(usable_rows(store))
        if config.knn_k >= usable:
            raise FacekdError(
                f"{settings_file}: index.knn_k: {config.knn_k} — expected at most {usable - 1}: {config.store} has "
                f"{usable} usable images, and each image's neighbours are the other images"
            )
        flat_index_bytes = usable * store.embedding_dim * 4
        if config.factory == "Flat" and flat_index_bytes > memory_budget_bytes(config.memory_gb):
            # An exact index would not fit: the same search, with the vectors read from the store block by block.
            knn = search_exact_streamed(store, config, backend=None, progress=progress, scheduler=scheduler)
            return NeighbourSearch(knn, None, flat_index_bytes)
        metadata = build_index(
            store, config, progress=progress, choose_search_breadth=lambda index: tuned_search_breadth(index, store, config)
        )
        return NeighbourSearch(search_knn(store, config, progress=progress, scheduler=scheduler), metadata, flat_index_bytes)
