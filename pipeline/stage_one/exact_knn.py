"""Exact all-vs-all kNN out of core: the database streamed from the store, per-block top k merged.

A `Flat` index (pipeline/stage_one/index.py) holds every vector in RAM (N x D float32: 12 GB for MS1MV2's
5.8 M x 512). Here the queries are held a pass at a time (as many as the memory budget allows)
and, for each pass, the database is read from the store block by block; each block's top k + 1
per query is merged into the pass's running result, as faiss.contrib.exhaustive_search's
knn_ground_truth does. Memory is bounded by one pass and one block, not by the store. The
neighbours are Flat's: the same ids up to ties (equal scores keep the lower store row), the same
scores up to float rounding.

Backends (`choose_backend`): FAISS on the CPU (`faiss.knn`, Flat's BLAS blocking), FAISS on the
GPU (`faiss.knn_gpu`, k + 1 <= 2048), and torch (blocked float32 matmul + topk), which runs the
search on a GPU where faiss-gpu is missing, cannot load, or k + 1 exceeds FAISS's GPU limit.
The passes can run on dask workers (`index.workers`, `--scheduler`), one pass per task, each worker
on its own GPU where there are several.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np
import torch
from tqdm import tqdm

from pipeline.dask_cluster import map_in_order
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer
from pipeline.stage_one.index import (
    DEVICES, GPU_MAX_K, IndexMetadata, KnnSummary, configure_faiss, drop_self, faiss_has_gpu, knn_search_client,
    publish_index, worker_threads,
)
from pipeline.stage_one.config import IndexConfig
from pipeline.stage_one.knn_file import write_knn
from pipeline.stage_one.store import EmbeddingStore, check_finite_rows
from pipeline.stage_one.store_views import iter_unit_vectors, usable_rows
from pipeline.stage_one.worker_store import StoreFile, store_on_worker

log = logging.getLogger(__name__)

BACKENDS = ("faiss-cpu", "faiss-gpu", "torch-cpu", "torch-cuda")
PASS_BLOCKS_MOST = 4  # store blocks of queries per pass at most: 4 x 65,536 rows by default
TORCH_QUERY_BLOCK = 2048  # queries per torch matmul: a 2048 x block_size float32 similarity matrix

# (queries Q x D, database B x D, k) -> (similarities Q x k, database positions Q x k), best first
BlockSearch = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def choose_backend(device: str, faiss_gpu: bool, torch_gpu: bool, k_searched: int) -> tuple[str, str]:
    """(backend, why): FAISS's GPU search where it has one and k allows, else torch on a GPU,
    else FAISS on the CPU; device "cuda" without any GPU is an error."""
    if device not in DEVICES:
        raise FacekdError(f"device is {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "faiss-cpu", "device: cpu"
    if faiss_gpu and k_searched <= GPU_MAX_K:
        return "faiss-gpu", "FAISS has GPU support"
    if torch_gpu:
        if faiss_gpu:
            return "torch-cuda", f"knn_k + 1 = {k_searched} exceeds FAISS's GPU limit of {GPU_MAX_K}"
        return "torch-cuda", "FAISS has no GPU support here but torch sees a GPU"
    if device == "cuda":
        raise FacekdError("device is 'cuda' but neither FAISS nor torch sees a GPU; use device: auto or cpu")
    return "faiss-cpu", "no GPU"


def block_search(backend: str, gpu: int = 0) -> BlockSearch:
    """The exact top-k search of a query block against a database block on `backend` (on GPU number `gpu`)."""
    if backend == "faiss-cpu":
        return lambda queries, database, k: faiss.knn(queries, database, k, metric=faiss.METRIC_INNER_PRODUCT)
    if backend == "faiss-gpu":
        resources = faiss.StandardGpuResources()
        return lambda queries, database, k: faiss.knn_gpu(
            resources, queries, database, k, metric=faiss.METRIC_INNER_PRODUCT, device=gpu
        )
    if backend == "torch-cpu":
        return _torch_search(torch.device("cpu"))
    if backend == "torch-cuda":
        return _torch_search(torch.device("cuda", gpu))
    raise FacekdError(f"exact search backend is {backend!r}; expected one of {', '.join(BACKENDS)}")


def _torch_search(device: torch.device) -> BlockSearch:
    """Blocked float32 matmul + topk (TF32 stays off: torch's default for matmuls)."""

    def search(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        database_on_device = torch.from_numpy(database).to(device)
        similarities, positions = [], []
        for start in range(0, len(queries), TORCH_QUERY_BLOCK):
            block = torch.from_numpy(queries[start : start + TORCH_QUERY_BLOCK]).to(device)
            top = torch.topk(block @ database_on_device.T, k, dim=1)
            similarities.append(top.values.cpu().numpy())
            positions.append(top.indices.cpu().numpy())
        return np.concatenate(similarities), np.concatenate(positions)

    return search


def merge_top_k(
    best_similarities: np.ndarray, best_rows: np.ndarray, similarities: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of a running result and a new block's result, per query; on equal scores the
    running result (earlier, lower store rows) comes first."""
    all_similarities = np.concatenate([best_similarities, similarities], axis=1)
    all_rows = np.concatenate([best_rows, rows], axis=1)
    order = np.argsort(-all_similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_similarities, order, axis=1), np.take_along_axis(all_rows, order, axis=1)


def memory_budget_bytes(gigabytes: float) -> int:
    """`index.memory_gb` in bytes (GiB: 2 ** 30)."""
    return int(gigabytes * (1 << 30))


def query_rows_per_pass(memory_bytes: int, dim: int, k: int, block_size: int) -> int:
    """Queries held at once: about what the budget leaves after one database block for their vectors and
    results, in whole store blocks, at least one and at most PASS_BLOCKS_MOST (so that dask workers and
    GPUs have passes to share; a pass costs one more read of the store, small beside its pass_rows x N
    similarities). Independent of the number of workers, so a run on workers makes the same passes."""
    per_query = 4 * dim + 4 * (k + 1) * (4 + 8)  # float32 vector; running, block and merged results
    left = memory_bytes - block_size * 4 * dim
    return min(max(1, left // per_query // block_size), PASS_BLOCKS_MOST) * block_size


def search_pass(
    store: EmbeddingStore, view: str, first: int, end: int, k: int, search: BlockSearch, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(usable rows of store rows [first, end), their k nearest other usable rows, similarities): the pass's
    queries held in memory, the database streamed from the store."""
    query_blocks = list(iter_unit_vectors(store, view, block_size, first, end))
    if not query_blocks:
        return np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    query_rows = np.concatenate([rows for rows, _ in query_blocks])
    queries = np.concatenate([vectors for _, vectors in query_blocks])
    del query_blocks
    found_rows, similarities = search_streamed(store, view, queries, k + 1, search, block_size)
    return query_rows, *drop_self(found_rows, similarities, query_rows, k)


def knn_blocks(
    passes: list[tuple[int, int]], searched: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int,
    block_size: int, bar: tqdm,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first store row, neighbours, similarities) for every block of `block_size` store rows, in order, from the
    passes' results (-1 / NaN for skipped rows)."""
    for (first, end), (query_rows, found_rows, similarities) in zip(passes, searched):
        for start in range(first, end, block_size):
            stop = min(start + block_size, end)
            in_block = (query_rows >= start) & (query_rows < stop)
            block_neighbours = np.full((stop - start, k), -1, np.int64)
            block_similarities = np.full((stop - start, k), np.nan, np.float32)
            block_neighbours[query_rows[in_block] - start] = found_rows[in_block]
            block_similarities[query_rows[in_block] - start] = similarities[in_block]
            yield start, block_neighbours, block_similarities
        bar.update(len(query_rows))


def search_streamed(
    store: EmbeddingStore, view: str, queries: np.ndarray, k: int, search: BlockSearch, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(store rows, similarities) of the k best database rows of each query, over every block."""
    best_similarities = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.full((len(queries), k), -1, np.int64)
    for database_rows, database in iter_unit_vectors(store, view, block_size):
        similarities, positions = search(queries, database, min(k, len(database)))
        best_similarities, best_rows = merge_top_k(
            best_similarities, best_rows, similarities, database_rows[positions], k
        )
    return best_rows, best_similarities


def search_exact_streamed(
    store: EmbeddingStore, config: IndexConfig, *, backend: str | None, progress: bool, scheduler: str | None = None
) -> KnnSummary:
    """Every usable image's `config.knn_k` nearest other images by exact search streamed from the store,
    in at most about `config.memory_gb` of memory per process.

    The queries are searched a pass at a time (as many rows as the memory budget allows), here or, with
    `config.workers` or `scheduler`, on dask workers: each worker reads its pass's queries and streams the
    database from the store at the same absolute path, searches on its own GPU where the backend is a GPU one
    (local workers take the GPUs in turn: `index.workers` = the number of GPUs uses them all), and this
    process writes the passes in order. Either way the passes are the same, so the kNN file is too.
    Writes the kNN file `search_knn` writes, and at `config.out` an index holding no vectors
    (the stage's declared output; its sidecar names the store, the view and factory "Flat").
    `backend` None: chosen from `config.device` (`choose_backend`), logged in one line.
    """
    k, view, block_size = config.knn_k, config.view, config.rows_per_search
    num_usable = len(usable_rows(store))
    if k >= num_usable:
        raise FacekdError(f"knn_k is {k}; expected 1 .. {num_usable - 1} (the store has {num_usable} usable images)")
    configure_faiss(config.threads)
    check_finite_rows(store, block_size)
    if backend is None:
        backend, why = choose_backend(config.device, faiss_has_gpu(), torch.cuda.is_available(), k + 1)
        fallback = backend == "torch-cuda"  # shown (a warning): FAISS could not use the GPU
        log.log(logging.WARNING if fallback else logging.INFO, "exact kNN on %s (%s)", backend, why)
    metadata = write_vectorless_index(store, Path(config.out), view)
    pass_rows = query_rows_per_pass(memory_budget_bytes(config.memory_gb), store.embedding_dim, k, block_size)
    passes = [(first, min(first + pass_rows, len(store))) for first in range(0, len(store), pass_rows)]
    bar = tqdm(total=num_usable, unit="query", desc="exact kNN (streamed)", disable=not progress)
    with knn_search_client(Path(config.knn), bar, config, scheduler) as client:
        if client is not None:
            arguments = [
                (StoreFile.of(store), view, first, end, k, backend, block_size, worker_threads(config)) for first, end in passes
            ]
            searched = map_in_order(client, pass_on_worker, arguments, "exact-knn-pass")
        else:
            search = block_search(backend)
            searched = (search_pass(store, view, first, end, k, search, block_size) for first, end in passes)
        write_knn(Path(config.knn), dict(asdict(metadata), k=k, search=f"exact, streamed ({backend})"), len(store), k,
                  block_size, knn_blocks(passes, searched, k, block_size, bar))
    return KnnSummary(Path(config.knn), backend, k, num_usable)


_worker_search: dict[tuple[str, int], BlockSearch] = {}  # a worker's block search, made on its first pass


def pass_on_worker(
    source: StoreFile, view: str, first: int, end: int, k: int, backend: str, block_size: int, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`search_pass` on a dask worker, with `threads` FAISS / torch threads and, for a GPU backend, this
    worker's GPU."""
    from distributed import get_worker

    configure_faiss(threads)
    torch.set_num_threads(threads)
    gpus = {"faiss-gpu": faiss.get_num_gpus, "torch-cuda": torch.cuda.device_count}.get(backend, lambda: 1)()
    key = backend, gpu_of_worker(get_worker().name, gpus)
    if key not in _worker_search:
        _worker_search[key] = block_search(*key)
    return search_pass(store_on_worker(source), view, first, end, k, _worker_search[key], block_size)


def gpu_of_worker(worker_name: object, gpus: int) -> int:
    """The GPU a dask worker searches on: a local cluster names its workers 0, 1, ..., and worker i takes
    GPU i mod `gpus`; a worker with another name takes GPU 0."""
    return worker_name % gpus if isinstance(worker_name, int) and gpus > 0 else 0


def write_vectorless_index(store: EmbeddingStore, index_path: Path, view: str) -> IndexMetadata:
    """An empty Flat index and its sidecar: the search streams the vectors from the store instead."""
    with exclusive_writer(index_path):
        return publish_index(faiss.IndexFlatIP(store.embedding_dim), index_path, store, "Flat", view, 0, 0)
