"""Stage one: embed every image of a dataset with the teacher, in parallel, into a store.

The dataset is split into blocks. Each dask worker process holds one ONNX Runtime session
(cached per process) and turns a block index range into embeddings; the calling process is the
single writer that puts finished blocks into the store. `embed.workers: 0` runs everything in the
calling process (no dask), which is also the reference the parallel path is tested against.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

import pipeline
from pipeline.dask_cluster import close_quietly, dask_client
from pipeline.data.dataset import FaceDataset
from pipeline.data.open import open_dataset
from pipeline.errors import CorruptImageError, FacekdError
from pipeline.files import exclusive_writer
from pipeline.stage_one.store import EmbeddingStore, StoreWriter, nonfinite_rows, some_keys, store_is_complete_for
from pipeline.face_model import OnnxFaceModel, Preprocessing
from pipeline.stage_one.config import EmbedConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherConfig:
    """Everything a worker needs to open its own teacher session (picklable)."""

    path: str
    preprocessing: Preprocessing
    device: str
    threads: int
    batch_size: int
    resize: bool

    @classmethod
    def of(cls, config: EmbedConfig) -> TeacherConfig:
        """The teacher `config` describes; its path absolute, since workers may run elsewhere."""
        return cls(
            path=str(Path(config.teacher).resolve()), preprocessing=Preprocessing(**config.preprocessing.model_dump()),
            device=config.device, threads=config.threads_per_worker, batch_size=config.batch_size, resize=config.resize,
        )

    def open(self) -> OnnxFaceModel:
        return OnnxFaceModel(
            self.path, self.preprocessing, device=self.device, threads=self.threads,
            batch_size=self.batch_size, resize=self.resize,
        )


@dataclass(frozen=True)
class EmbedSummary:
    store_path: Path
    up_to_date: bool  # a complete store for the same teacher and dataset was already there
    num_images: int
    resumed_blocks: int
    embedded_blocks: int
    num_skipped: int
    write_seconds: float = 0.0  # time spent writing blocks into the store (the single writer)


_SESSIONS: dict[TeacherConfig, OnnxFaceModel] = {}


def _teacher_session(config: TeacherConfig) -> OnnxFaceModel:
    """One session per process and configuration, reused by every block that process embeds."""
    if config not in _SESSIONS:
        _SESSIONS[config] = config.open()
    return _SESSIONS[config]


def embed_block(
    dataset: FaceDataset, config: TeacherConfig, start: int, stop: int, skip_corrupt: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n x 2 x D float32, image and flip) and skipped flags (n uint8) of one block."""
    teacher = _teacher_session(config)
    images: list[np.ndarray | None] = []
    for index in range(start, stop):
        try:
            images.append(dataset.load(index))
        except CorruptImageError:
            if not skip_corrupt:
                raise
            images.append(None)
    shapes = {image.shape for image in images if image is not None}
    if len(shapes) > 1:
        first = next(i for i, image in enumerate(images) if image is not None)
        odd = next(i for i, image in enumerate(images) if image is not None and image.shape != images[first].shape)
        raise FacekdError(
            f"{dataset.source(start + odd)}: image is {images[odd].shape[1]}x{images[odd].shape[0]} but "
            f"{dataset.source(start + first)} is {images[first].shape[1]}x{images[first].shape[0]}; "
            "all images of a dataset must be aligned to one size"
        )
    skipped = np.array([image is None for image in images], dtype=np.uint8)
    embedding_dim = teacher.embedding_dim
    embeddings = np.zeros((stop - start, 2, embedding_dim), dtype=np.float32)
    if shapes:
        shape = shapes.pop()
        batch = np.stack([image if image is not None else np.zeros(shape, np.uint8) for image in images])
        keep = skipped == 0
        embeddings[keep] = teacher.embed_with_flip(batch[keep])
    return embeddings, skipped


def store_provenance(dataset: FaceDataset, teacher: OnnxFaceModel, dataset_root: str) -> dict[str, Any]:
    """Provenance attributes of the store for this teacher and dataset."""
    return dict(
        teacher.provenance(),
        dataset_kind=dataset.kind,
        dataset_fingerprint=dataset.fingerprint(),
        dataset_root=dataset_root,
        num_images=len(dataset),
        num_identities=dataset.num_identities,
        facekd_version=pipeline.__version__,
    )


def _run_in_process(
    dataset: FaceDataset, config: TeacherConfig, writer: StoreWriter, skip_corrupt: bool
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    for block in writer.pending_blocks:
        start, stop = writer.layout.bounds(block)
        yield block, embed_block(dataset, config, start, stop, skip_corrupt)


def _run_on_dask(
    dataset: FaceDataset, config: TeacherConfig, writer: StoreWriter, skip_corrupt: bool, client: Any
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """Submit blocks with a bounded window so finished blocks never pile up in memory."""
    from distributed import as_completed

    pending = list(writer.pending_blocks)
    window = 2 * max(1, len(client.scheduler_info()["workers"]))
    (dataset_future,) = client.scatter([dataset], broadcast=True)

    def submit(block: int) -> Any:
        start, stop = writer.layout.bounds(block)
        return client.submit(
            embed_block, dataset_future, config, start, stop, skip_corrupt, key=f"embed-block-{block}-{run_id}"
        )

    run_id = uuid.uuid4().hex  # task keys unique on a cluster that other clients share
    futures = {}
    queue = as_completed()
    for block in pending[:window]:
        future = submit(block)
        futures[future.key] = block
        queue.add(future)
    next_block = window
    for future in queue:
        yield futures.pop(future.key), future.result()
        if next_block < len(pending):
            new = submit(pending[next_block])
            futures[new.key] = pending[next_block]
            queue.add(new)
            next_block += 1


def embed_images(
    config: EmbedConfig, *, knn_k: int | None, settings_file: str, scheduler: str | None, progress: bool
) -> EmbedSummary:
    """`facekd embed`: the dataset of `config` into its store, checked first against the `index.knn_k`
    that will be searched (None: no index section), which would otherwise fail only after the teacher's pass.

    `settings_file` (where `config` and `knn_k` came from) is named in that error.
    """
    dataset = open_dataset(config.dataset, config.dataset_format)
    if knn_k is not None and knn_k >= len(dataset):
        raise FacekdError(
            f"{settings_file}: index.knn_k: {knn_k} — expected at most {len(dataset) - 1}: {config.dataset} "
            f"has {len(dataset)} images, and each image's neighbours are the other images"
        )
    return embed_dataset(dataset, config, dataset_root=config.dataset, scheduler=scheduler, progress=progress)


def embed_dataset(
    dataset: FaceDataset, config: EmbedConfig, *, dataset_root: str, scheduler: str | None, progress: bool
) -> EmbedSummary:
    """Embed `dataset` into `config.store`, resuming a partial store if one exists.

    `config.workers` processes of a local dask cluster (0: in this process), or the cluster at
    `scheduler`. Each worker's session uses `config.threads_per_worker` threads. `dataset_root` is
    recorded in the store's provenance ("": none), for tools that show the images.
    """
    store_path = Path(config.store)
    teacher_config = TeacherConfig.of(config)
    with exclusive_writer(store_path):  # before any work: a second writer is refused at once
        in_process = config.workers == 0 and scheduler is None
        local_config = replace(teacher_config, threads=0) if in_process else teacher_config
        teacher = _teacher_session(local_config)
        provenance = store_provenance(dataset, teacher, dataset_root)
        if store_is_complete_for(store_path, dict(provenance, embedding_dtype=config.dtype)):
            return EmbedSummary(store_path, True, len(dataset), 0, 0, _count_skipped(store_path))
        writer = StoreWriter(
            store_path, provenance, dataset.labels, dataset.keys, dataset.identity_names,
            teacher.embedding_dim, config.images_per_block, config.dtype,
        )
        try:
            write_seconds = _write_blocks(
                dataset, local_config if in_process else teacher_config, writer, config.on_corrupt == "skip",
                in_process, config.workers, scheduler, progress,
            )
            writer.finalize()
        except KeyboardInterrupt:
            raise FacekdError(
                f"{store_path}: interrupted; the finished blocks are kept in {writer.partial.name}: "
                "run `facekd embed` again to resume"
            ) from None
        finally:
            writer.close()
    resumed = len(writer.resumed_blocks)
    return EmbedSummary(
        store_path, False, len(dataset), resumed, writer.layout.num_blocks - resumed, _count_skipped(store_path),
        write_seconds,
    )


def _write_blocks(
    dataset: FaceDataset, config: TeacherConfig, writer: StoreWriter, skip_corrupt: bool,
    in_process: bool, workers: int, scheduler: str | None, progress: bool,
) -> float:
    """Embed the pending blocks (here or on dask) and write each as it finishes; the seconds spent writing."""
    already_done = sum(stop - start for start, stop in map(writer.layout.bounds, writer.resumed_blocks))
    bar = tqdm(
        total=len(dataset), initial=already_done, unit="img", desc=f"embed {writer.path.name}",
        disable=not progress, smoothing=0.1,
    )
    client = None
    write_seconds = 0.0
    try:
        if in_process:
            results = _run_in_process(dataset, config, writer, skip_corrupt)
        else:
            client = dask_client(workers, config.threads, scheduler)
            results = _run_on_dask(dataset, config, writer, skip_corrupt, client)
        for block, (embeddings, skipped) in results:
            started = time.perf_counter()
            start, stop = writer.layout.bounds(block)
            with np.errstate(over="ignore"):  # an overflowing cast is refused below, naming the images
                stored = embeddings.astype(writer.embedding_dtype)
            norms = np.linalg.norm(embeddings, axis=2).astype(np.float32)
            check_finite_embeddings(dataset, start, embeddings, stored, norms)
            writer.write_block(block, stored, norms, skipped)
            write_seconds += time.perf_counter() - started
            bar.update(stop - start)
    finally:
        bar.close()
        if client is not None:
            close_quietly(client)
    return write_seconds


def check_finite_embeddings(
    dataset: FaceDataset, start: int, embeddings: np.ndarray, stored: np.ndarray, norms: np.ndarray
) -> None:
    """Refuse a block whose teacher outputs, or their cast to the store's dtype, are NaN or infinite."""
    teacher_nonfinite = nonfinite_rows(embeddings) | nonfinite_rows(norms)
    cast_nonfinite = nonfinite_rows(stored) & ~teacher_nonfinite
    for bad, problem in (
        (teacher_nonfinite, "the teacher returned NaN or infinite embeddings for {images}; check the teacher "
                            "model and embed.preprocessing"),
        (cast_nonfinite, "the teacher's embeddings of {images} exceed the range of the store's dtype "
                         f"{stored.dtype} (largest {np.finfo(stored.dtype).max:g}); set `embed.dtype: float32`"),
    ):
        if bad.any():
            rows = start + np.flatnonzero(bad)
            images = some_keys([dataset.keys[row] for row in rows[:5]], len(rows))
            raise FacekdError(problem.format(images=f"{len(rows)} images ({images})"))


def _count_skipped(store_path: Path) -> int:
    with EmbeddingStore(store_path) as store:
        return int(store.skipped.sum())
