"""The FAISS index over the teacher's embeddings and the all-vs-all kNN search mining reads.

What is indexed: one unit vector per usable image, of the store view chosen by `view`
(pipeline/stage_one/store_views.py). Index row r is the r-th usable store row (`usable_rows`), so
no id map is stored: the provenance hash in the sidecar pins the store, and with it the skipped rows.

Files: `<index>` (faiss.write_index) and `<index>.json` (IndexMetadata, with the index file's
checksum, checked on load); the search writes the kNN file (pipeline/stage_one/knn_file.py).
Each output is written by one process at a time, under a temporary name, and published only when
complete and verified. The query for image i never returns i, and the flip view is never a
separate row, so "self or own flip" cannot appear.

Exact search (`Flat`) holds the database in the index (N x D float32) and streams the queries
from the store block by block. GPU search is used when FAISS has GPU support and a GPU, for
k + 1 <= 2048 (FAISS's GPU limit); see `search_device`.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from pipeline.checksums import file_checksum, new_checksum
from pipeline.dask_cluster import close_quietly, dask_client, map_in_order
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer, write_text_atomically, written_atomically
from pipeline.stage_one.config import IndexConfig
from pipeline.stage_one.knn_file import write_knn
from pipeline.stage_one.store import EmbeddingStore, check_finite_rows, check_store_hash
from pipeline.stage_one.store_views import iter_unit_vectors, read_unit_vectors, usable_rows
from pipeline.stage_one.worker_store import StoreFile, store_on_worker

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
GPU_MAX_K = 2048  # largest k a FAISS GPU index can search
METRIC = "inner_product"
FLAT_DATABASE_BLOCK = 16384  # database rows per BLAS block of an exact search (FAISS's default: 1024)


@dataclass(frozen=True)
class SearchBreadth:
    """How an index is searched: nprobe (IVF) and efSearch (HNSW), None where the index has no such knob;
    and the recall@knn_k measured against exact search on `recall_queries` sampled images (None, 0: not measured)."""

    nprobe: int | None = None
    ef_search: int | None = None
    recall: float | None = None
    recall_queries: int = 0


@dataclass(frozen=True)
class IndexMetadata:
    """The sidecar of an index file: which store it indexes and how, and how it is searched (`search_knn` uses
    the sidecar's nprobe / ef_search, chosen when the index was built)."""

    store_provenance_hash: str
    store_path: str
    factory: str
    view: str
    metric: str
    ntotal: int
    dim: int
    train_sample: int
    seed: int
    faiss_version: str
    index_checksum: str  # of the index file's bytes
    nprobe: int | None
    ef_search: int | None
    recall: float | None
    recall_queries: int

    @property
    def search_breadth(self) -> SearchBreadth:
        return SearchBreadth(self.nprobe, self.ef_search, self.recall, self.recall_queries)


@dataclass(frozen=True)
class KnnSummary:
    knn_path: Path
    device: str
    k: int
    num_queries: int


def metadata_path(index_path: str | Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".json")


def configure_faiss(threads: int) -> None:
    """FAISS's OpenMP threads (0: FAISS's default, all cores) and its exact-search blocking.

    Exact search computes query-block x database-block similarity matrices with BLAS and keeps
    a heap per query. FAISS's default of 1024 database rows per block spends much of an
    all-vs-all search on per-block overhead; FLAT_DATABASE_BLOCK rows measured 1.8-2.7x faster
    (bench/mining.py, BENCHMARKS.md), for a scratch matrix of 4096 x 16384 float32 = 256 MiB.
    """
    if threads > 0:
        faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_database_bs = FLAT_DATABASE_BLOCK


def _training_vectors(store: EmbeddingStore, view: str, train_sample: int, seed: int, block_size: int) -> np.ndarray:
    """A seeded random sample of usable rows, read in one streaming pass over the store."""
    rows = usable_rows(store)
    chosen = np.zeros(len(store), dtype=bool)
    chosen[np.random.default_rng(seed).choice(rows, min(train_sample, len(rows)), replace=False)] = True
    parts = [vectors[chosen[block_rows]] for block_rows, vectors in iter_unit_vectors(store, view, block_size)]
    return np.concatenate(parts)


def build_index(
    store: EmbeddingStore, config: IndexConfig, *, progress: bool,
    choose_search_breadth: Callable[[faiss.Index], SearchBreadth] | None = None,
) -> IndexMetadata:
    """Build the `config.factory` index (any faiss.index_factory string) over the store; write it atomically to `config.out`.

    It is searched with `choose_search_breadth(index)` (`find_neighbours`: tuned to `config.recall_target`,
    pipeline/stage_one/recall_target.py), or with `config.nprobe` / `config.ef_search` as set.
    """
    index_path = Path(config.out)
    with exclusive_writer(index_path):
        index, trained_on = _built_index(
            store, index_path, config.factory, config.view, config.train_sample, config.seed, config.rows_per_search,
            config.threads, progress,
        )
        if choose_search_breadth is None:
            breadth = set_search_parameters(index, config.nprobe, config.ef_search)
        else:
            breadth = choose_search_breadth(index)
        return publish_index(index, index_path, store, config.factory, config.view, trained_on, config.seed, breadth)


def _built_index(
    store: EmbeddingStore, index_path: Path, factory: str, view: str, train_sample: int, seed: int,
    block_size: int, threads: int, progress: bool,
) -> tuple[faiss.Index, int]:
    """The index, trained and filled in memory, and the number of vectors it was trained on."""
    configure_faiss(threads)
    if not usable_rows(store).size:
        raise FacekdError(f"{store.path}: every image is skipped; nothing to index")
    check_finite_rows(store, block_size)
    try:
        index = faiss.index_factory(store.embedding_dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise FacekdError(f"index factory {factory!r} is not a valid faiss.index_factory string ({error})") from None
    trained_on = 0
    with faiss_threads(1) if inserts_into_hnsw(index) else nullcontext():
        if not index.is_trained:
            training = _training_vectors(store, view, train_sample, seed, block_size)
            trained_on = len(training)
            try:
                index.train(training)
            except RuntimeError as error:
                raise FacekdError(f"index factory {factory!r}: training on {trained_on} vectors failed ({error})") from None
        bar = tqdm(total=len(usable_rows(store)), unit="img", desc=f"index {index_path.name}", disable=not progress)
        for block_rows, vectors in iter_unit_vectors(store, view, block_size):
            index.add(vectors)
            bar.update(len(block_rows))
        bar.close()
    return index, trained_on


def inserts_into_hnsw(index: faiss.Index) -> bool:
    """Whether filling `index` inserts vectors into an HNSW graph (HNSW*, or an IVF's HNSW coarse quantizer).

    FAISS inserts in whatever order its threads reach the vectors, so a graph built on several threads
    differs from run to run (FAISS wiki, "Threads and asynchronous calls"); built on one, it is the same
    bytes every time. Searching it is deterministic on any number of threads.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return inserts_into_hnsw(index.index)
    if isinstance(index, faiss.IndexHNSW):
        return True
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and inserts_into_hnsw(ivf.quantizer)


@contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """FAISS's OpenMP threads set to `threads` inside the block, restored after it."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def publish_index(
    index: faiss.Index, index_path: Path, store: EmbeddingStore, factory: str, view: str, train_sample: int, seed: int,
    breadth: SearchBreadth = SearchBreadth(),
) -> IndexMetadata:
    """Write the index file atomically, then its sidecar with the file's checksum, provenance and search breadth."""
    index_checksum = write_index_file(index, index_path)
    metadata = IndexMetadata(
        store_provenance_hash=store.provenance_hash, store_path=str(store.path), factory=factory, view=view,
        metric=METRIC, ntotal=int(index.ntotal), dim=store.embedding_dim, train_sample=train_sample, seed=seed,
        faiss_version=faiss.__version__, index_checksum=index_checksum, **asdict(breadth),
    )
    write_text_atomically(metadata_path(index_path), json.dumps(asdict(metadata), indent=2, sort_keys=True) + "\n")
    return metadata


def write_index_file(index: faiss.Index, index_path: Path) -> str:
    """Write a FAISS index atomically and return the checksum of its bytes.

    Written through Python: FAISS writing to a path reports a failed write (full disk, file-size
    limit) only on stderr and returns normally, leaving a truncated file.
    """
    written = new_checksum()
    with written_atomically(index_path) as temporary:
        with open(temporary, "wb") as stream:

            def write(chunk: bytes) -> None:
                written.update(chunk)
                stream.write(chunk)

            faiss.write_index(index, faiss.PyCallbackIOWriter(write))
        if file_checksum(temporary) != written.hexdigest():
            raise FacekdError(f"{temporary}: reads back differently from what was written (unreliable storage)")
    return written.hexdigest()


def _faiss_reason(error: RuntimeError) -> str:
    """The useful line of a FAISS error (its message starts with the C++ source location)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "FAISS error"


def read_metadata(index_path: str | Path) -> IndexMetadata:
    path = metadata_path(index_path)
    if not Path(index_path).is_file() or not path.is_file():
        raise FacekdError(f"{index_path}: index or its metadata {path.name} not found; run `facekd index`")
    try:
        return IndexMetadata(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise FacekdError(f"{path}: not a facekd index metadata file ({error})") from None


def checked_metadata(index_path: str | Path, store: EmbeddingStore) -> IndexMetadata:
    """The metadata of an index file built from `store` and intact since it was written (the index is not read)."""
    metadata = read_metadata(index_path)
    check_store_hash(index_path, metadata.store_provenance_hash, store)
    if file_checksum(Path(index_path)) != metadata.index_checksum:
        raise FacekdError(
            f"{index_path}: content does not match the checksum in {metadata_path(index_path).name} (the file is "
            "damaged, or was replaced without its metadata); run `facekd index` again"
        )
    return metadata


def load_index(index_path: str | Path, store: EmbeddingStore) -> tuple[faiss.Index, IndexMetadata]:
    """The CPU index and its metadata; refuses an index built from another store, or damaged since it was written."""
    metadata = checked_metadata(index_path, store)
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise FacekdError(f"{index_path}: not a readable FAISS index ({_faiss_reason(error)}); run `facekd index` again") from None
    usable = len(usable_rows(store))
    if index.ntotal != usable or metadata.ntotal != usable:
        raise FacekdError(f"{index_path}: holds {index.ntotal} vectors but {store.path} has {usable} usable images")
    return index, metadata


def set_search_parameters(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> SearchBreadth:
    """Set nprobe (IVF) and efSearch (HNSW, also an HNSW coarse quantizer) where the index has them and the
    value is not None; what was set."""
    space = faiss.ParameterSpace()
    space.initialize(index)
    available = {space.parameter_ranges.at(i).name for i in range(space.parameter_ranges.size())}
    wanted = {"nprobe": nprobe, "efSearch": ef_search, "quantizer_efSearch": ef_search}
    applied = {name: value for name, value in wanted.items() if name in available and value is not None}
    for name, value in applied.items():
        space.set_index_parameter(index, name, value)
    return SearchBreadth(applied.get("nprobe"), applied.get("efSearch", applied.get("quantizer_efSearch")))


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def search_device(requested: str, gpu_available: bool, k_searched: int) -> tuple[str, str]:
    """("cpu" or "cuda", a warning or "") for a search of `k_searched` neighbours per query.

    auto: the GPU when there is one, unless k_searched exceeds FAISS's GPU limit (then the CPU,
    with a warning). cuda: the GPU or a FacekdError saying why not.
    """
    if requested not in DEVICES:
        raise FacekdError(f"device is {requested!r}; expected one of {', '.join(DEVICES)}")
    too_large = k_searched > GPU_MAX_K
    if requested == "cuda":
        if not gpu_available:
            raise FacekdError("device is 'cuda' but FAISS has no GPU support or sees no GPU; use device: auto or cpu")
        if too_large:
            raise FacekdError(
                f"knn_k + 1 = {k_searched} exceeds FAISS's GPU limit of {GPU_MAX_K} neighbours; "
                "lower knn_k or use device: cpu"
            )
        return "cuda", ""
    if requested == "auto" and gpu_available:
        if too_large:
            return "cpu", f"knn_k + 1 = {k_searched} exceeds FAISS's GPU limit of {GPU_MAX_K}; searching on the CPU"
        return "cuda", ""
    return "cpu", ""


def _to_gpu(index: faiss.Index, requested: str) -> tuple[faiss.Index, str]:
    """The index on every GPU; with device auto, an index type FAISS cannot clone stays on the CPU."""
    try:
        return faiss.index_cpu_to_all_gpus(index), "cuda"
    except RuntimeError as error:
        if requested == "cuda":
            raise FacekdError(f"this index type cannot run on the GPU ({error}); use device: cpu") from None
        log.warning("this index type cannot run on the GPU (%s); searching on the CPU", error)
        return index, "cpu"


def drop_self(
    neighbours: np.ndarray, similarities: np.ndarray, query_rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k results of each query that are not the query itself (searched with k + 1)."""
    is_self = neighbours == query_rows[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(neighbours, order, axis=1), np.take_along_axis(similarities, order, axis=1)


def search_knn(
    store: EmbeddingStore, config: IndexConfig, *, progress: bool, scheduler: str | None = None
) -> KnnSummary:
    """Every usable image's `config.knn_k` nearest other images in the index at `config.out`, written to
    `config.knn` (HDF5, atomically).

    The query blocks (`config.rows_per_search` rows) are searched in this process (`config.workers`
    0, no `scheduler`), or as tasks on `config.workers` local dask worker processes or the cluster at
    `scheduler`, each worker reading the index file once and its blocks' vectors from the store (both at
    the same absolute paths on every worker); either way this process writes the blocks
    in order, and the index is searched with its sidecar's nprobe / ef_search. Each worker searches
    with this process's number of FAISS threads (`config.threads`; 0: this machine's cores), since
    BLAS sums in another order with another thread count: the kNN file is byte-identical to the one
    searched here.
    """
    k, block_size = config.knn_k, config.rows_per_search
    knn_path = Path(config.knn)
    on_dask = bool(config.workers or scheduler)
    configure_faiss(config.threads)
    rows_of_index = usable_rows(store)
    if on_dask:
        metadata, index = checked_metadata(config.out, store), None
        if metadata.ntotal != len(rows_of_index):
            raise FacekdError(
                f"{config.out}: holds {metadata.ntotal} vectors but {store.path} has {len(rows_of_index)} usable images"
            )
        if config.device == "cuda":
            raise FacekdError("index.device is 'cuda', but index.workers / --scheduler search on the workers' CPUs; "
                              "use device: auto or cpu, or index.workers: 0")
        chosen = "cpu"
    else:
        index, metadata = load_index(config.out, store)
    if k >= metadata.ntotal:
        raise FacekdError(f"knn_k is {k}; expected 1 .. {metadata.ntotal - 1} (the store has {metadata.ntotal} usable images)")
    if index is not None:
        set_search_parameters(index, metadata.nprobe, metadata.ef_search)
        chosen, warning = search_device(config.device, faiss_has_gpu(), k + 1)
        if warning:
            log.warning(warning)
        if chosen == "cuda":
            index, chosen = _to_gpu(index, config.device)
    bar = tqdm(total=len(rows_of_index), unit="query", desc=f"kNN {knn_path.name}", disable=not progress)
    blocks_of_rows = list(query_blocks(store, block_size))
    with knn_search_client(knn_path, bar, config, scheduler) as client:
        if client is not None:
            index_file = IndexFile(
                str(Path(config.out).resolve()), metadata.index_checksum, metadata.nprobe, metadata.ef_search,
                worker_threads(config),
            )
            source = StoreFile.of(store)
            arguments = [(index_file, source, metadata.view, start, stop, k + 1) for start, stop, _ in blocks_of_rows]
            searched = map_in_order(client, search_on_worker, arguments, "knn-block")
        else:
            searched = (search_block(index, store, metadata.view, rows, k + 1) for _, _, rows in blocks_of_rows)

        def blocks() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            for (start, stop, query_rows), result in zip(blocks_of_rows, searched):
                bar.update(len(query_rows))
                yield start, *_block_neighbours(stop - start, start, query_rows, result, rows_of_index, k)

        write_knn(knn_path, dict(asdict(metadata), k=k), len(store), k, block_size, blocks())
    return KnnSummary(knn_path, chosen, k, len(rows_of_index))


@contextmanager
def knn_search_client(knn_path: Path, bar: tqdm, config: IndexConfig, scheduler: str | None) -> Iterator[Any]:
    """The dask client of a kNN search written to `knn_path` (None: `config.workers` 0 and no `scheduler`, search
    here); Ctrl-C becomes a clear error, and the progress bar and a local cluster are closed however it ends."""
    client = None
    try:
        if config.workers or scheduler:
            client = dask_client(config.workers, 1, scheduler)
        yield client
    except KeyboardInterrupt:
        raise FacekdError(f"{knn_path}: interrupted; no kNN file written: run `facekd index` again") from None
    finally:
        bar.close()
        if client is not None:
            close_quietly(client)


def worker_threads(config: IndexConfig) -> int:
    """FAISS / BLAS threads of each dask worker: as many as this process uses (`config.threads`, 0: its
    OpenMP default). dask starts workers with one, and BLAS sums in another order with another thread count."""
    return config.threads or faiss.omp_get_max_threads()


def query_blocks(store: EmbeddingStore, block_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, usable rows) of every block of `block_size` store rows, in order."""
    for start in range(0, len(store), block_size):
        stop = min(start + block_size, len(store))
        yield start, stop, _usable_rows_between(store, start, stop)


def _usable_rows_between(store: EmbeddingStore, start: int, stop: int) -> np.ndarray:
    return start + np.flatnonzero(~store.skipped[start:stop])


def search_block(
    index: faiss.Index, store: EmbeddingStore, view: str, query_rows: np.ndarray, k_searched: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """FAISS's (similarities, index rows) of `k_searched` results for some store rows (None: no rows)."""
    if not len(query_rows):
        return None
    return index.search(read_unit_vectors(store, query_rows, view), k_searched)


def _block_neighbours(
    rows_in_block: int, start: int, query_rows: np.ndarray, result: tuple[np.ndarray, np.ndarray] | None,
    rows_of_index: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The block's store-row neighbours and similarities from FAISS's (similarities, index rows) of k + 1 results;
    skipped rows hold -1 and NaN."""
    block_neighbours = np.full((rows_in_block, k), -1, np.int64)
    block_similarities = np.full((rows_in_block, k), np.nan, np.float32)
    if result is not None:
        found_rows, similarities = found_store_rows(result, rows_of_index, query_rows, k)
        block_neighbours[query_rows - start] = found_rows
        block_similarities[query_rows - start] = np.where(found_rows >= 0, similarities, np.nan)
    return block_neighbours, block_similarities


def found_store_rows(
    result: tuple[np.ndarray, np.ndarray], rows_of_index: np.ndarray, query_rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's (similarities, index rows) of k + 1 results per query -> the k best other store rows (-1: none
    found) and their similarities."""
    similarities, found = result
    found_rows = np.where(found >= 0, rows_of_index[np.maximum(found, 0)], -1)
    return drop_self(found_rows, similarities, query_rows, k)


@dataclass(frozen=True)
class IndexFile:
    """What a dask worker needs to load the index once and search it (picklable; `path` absolute)."""

    path: str
    checksum: str
    nprobe: int | None
    ef_search: int | None
    threads: int


_worker_index: dict[IndexFile, faiss.Index] = {}  # the one index a worker process holds, by what it was loaded from


def _index_on_worker(index_file: IndexFile) -> faiss.Index:
    """The index of `index_file`, read on this worker's first block and kept for the next ones."""
    if index_file not in _worker_index:
        _worker_index.clear()
        if not Path(index_file.path).is_file() or file_checksum(Path(index_file.path)) != index_file.checksum:
            raise FacekdError(
                f"{index_file.path}: missing on this dask worker, or not the index the search was started with "
                f"(checksum {index_file.checksum}); workers need the same file at the same path"
            )
        configure_faiss(index_file.threads)
        index = faiss.read_index(index_file.path)
        set_search_parameters(index, index_file.nprobe, index_file.ef_search)
        _worker_index[index_file] = index
    return _worker_index[index_file]


def search_on_worker(
    index_file: IndexFile, source: StoreFile, view: str, start: int, stop: int, k_searched: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """`search_block` of store rows [start, stop) on a dask worker, which reads them from the store itself."""
    store = store_on_worker(source)
    return search_block(_index_on_worker(index_file), store, view, _usable_rows_between(store, start, stop), k_searched)


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact top k that the approximate top k also holds."""
    hits = [len(np.intersect1d(approximate[:k], truth[:k])) for approximate, truth in zip(found, exact)]
    return float(np.mean(hits)) / k
