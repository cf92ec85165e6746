"""Embedding stores with known contents, written through the real StoreWriter, and the index + kNN
search the stage-one tests run on them."""
from pathlib import Path

import numpy as np

from pipeline.data.dataset import FaceDataset
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.stage_one.config import EmbedConfig, IndexConfig, MineConfig
from pipeline.stage_one.embed import EmbedSummary, embed_dataset
from pipeline.stage_one.index import build_index, search_knn
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.store import EmbeddingStore, StoreWriter


def embed_here(dataset: FaceDataset, teacher: str | Path, store: Path, **settings) -> EmbedSummary:
    """`embed_dataset` with `embed`'s settings (EmbedConfig's defaults, workers 0: in this process)
    changed by `settings`; no dataset_root in the provenance."""
    config = EmbedConfig(teacher=str(teacher), store=str(store), **{"workers": 0, **settings})
    return embed_dataset(dataset, config, dataset_root="", scheduler=None, progress=False)


def write_store(
    path: Path,
    image_view: np.ndarray,
    labels: np.ndarray,
    *,
    flip_view: np.ndarray | None = None,
    skipped: np.ndarray | None = None,
    teacher: str = "a",
    block_size: int = 64,
    keys: list[str] | None = None,
    identity_names: list[str] | None = None,
) -> Path:
    """A store with hand-built embeddings; the flip view defaults to a copy of the image view, the keys
    and identity names to idL/RRRR.jpg and idL."""
    num_images, dim = image_view.shape
    flip_view = image_view if flip_view is None else flip_view
    skipped = np.zeros(num_images, bool) if skipped is None else skipped
    embeddings = np.stack([image_view, flip_view], axis=1).astype(np.float32)
    embeddings[skipped] = 0
    provenance = {"teacher_sha256": teacher * 64, "dataset_kind": "image_folder", "dataset_fingerprint": "f" * 64}
    names = identity_names or [f"id{label}" for label in range(int(labels.max()) + 1)]
    keys = keys or [f"id{label}/{row:04d}.jpg" for row, label in enumerate(labels)]
    writer = StoreWriter(path, provenance, labels, keys, names, dim, block_size, "float16")
    for block in writer.pending_blocks:
        start, stop = writer.layout.bounds(block)
        block_embeddings = embeddings[start:stop]
        writer.write_block(
            block, block_embeddings.astype(np.float16), np.linalg.norm(block_embeddings, axis=2),
            skipped[start:stop].astype(np.uint8),
        )
    return writer.finalize()


def clustered_vectors(num_clusters: int, per_cluster: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Identities as clusters on the sphere, like face embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim))
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    vectors = centres[labels] / np.sqrt(dim) + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return vectors.astype(np.float32), labels


def write_projection_store(path: Path, faces: Path, teacher: str = "p") -> Path:
    """A store whose "teacher" is a fixed random projection of each image's 8 x 8 colour pattern.

    Face-like geometry (same identity ~0.99, different identities < 0.5) at no model cost; the
    ONNX-teacher store is covered in test_mining.py.
    """
    dataset = ImageFolderDataset(faces)
    images = np.stack([dataset.load(row) for row in range(len(dataset))]).astype(np.float32) - 127.5
    views = np.stack([images, images[:, :, ::-1]], axis=1)
    patterns = views.reshape(len(dataset), 2, 8, 4, 8, 4, 3).mean(axis=(3, 5)).reshape(len(dataset), 2, -1)
    embeddings = (patterns @ np.random.default_rng(0).normal(size=(patterns.shape[2], 16))).astype(np.float32)
    provenance = {"teacher_sha256": teacher * 64, "dataset_kind": dataset.kind, "dataset_fingerprint": dataset.fingerprint(),
                  "dataset_root": str(faces)}
    writer = StoreWriter(path, provenance, dataset.labels, dataset.keys, dataset.identity_names, 16, block_size=16,
                         embedding_dtype="float16")
    for block in writer.pending_blocks:
        start, stop = writer.layout.bounds(block)
        writer.write_block(block, embeddings[start:stop].astype(np.float16), np.linalg.norm(embeddings[start:stop], axis=2),
                           np.zeros(stop - start, np.uint8))
    return writer.finalize()


def index_config(tmp_path: Path, **settings) -> IndexConfig:
    """`index` settings (IndexConfig's defaults) changed by `settings`; the index and kNN file in `tmp_path`."""
    return IndexConfig(**{"out": str(tmp_path / "index.faiss"), "knn": str(tmp_path / "knn.h5"), **settings})


def mine_config(tmp_path: Path, name: str = "pairs.h5", **settings) -> MineConfig:
    """`mine` settings (MineConfig's defaults) changed by `settings`, on `tmp_path`'s kNN file; the table `tmp_path / name`,
    the suspicious pairs next to it."""
    suspicious = str((tmp_path / name).with_suffix(".suspicious.csv"))
    return MineConfig(**{"knn": str(tmp_path / "knn.h5"), "out": str(tmp_path / name), "suspicious": suspicious, **settings})


def index_and_search(store_path: Path, tmp_path: Path, k: int, **settings) -> tuple[np.ndarray, np.ndarray]:
    """Build the index of `settings` (IndexConfig keys) over the store and search its kNN file: (neighbours, similarities)."""
    config = index_config(tmp_path, knn_k=k, rows_per_search=50, **settings)
    with EmbeddingStore(store_path) as store:
        build_index(store, config, progress=False)
        search_knn(store, config, progress=False)
        with KnnFile(tmp_path / "knn.h5", store) as knn:
            return knn.neighbours[:], knn.similarities[:]
