"""The kNN file: every image's k nearest other images, as searched by `facekd index`, read by mining.

HDF5 with `neighbours` (N x k int64 store rows) and `similarities` (N x k float32), row i for
store row i, best first; -1 / NaN where there is no neighbour (skipped images). Its attributes
are the index's metadata (store provenance hash, factory, view, ...) and the search's k; its
content checksum is checked by `KnnFile.verify`. A file is written by one process at a time,
under a temporary name, and published only when complete and verified; its bytes are identical
for identical inputs (fixed chunks, no timestamps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.errors import ProvenanceMismatchError
from pipeline.files import exclusive_writer
from pipeline.hdf5 import open_output, verify_columns, written_hdf5
from pipeline.stage_one.store import EmbeddingStore, check_store_hash

KNN_COLUMNS = ("neighbours", "similarities")
KNN_ATTRIBUTES = ("store_provenance_hash", "k", "view", "factory")


def write_knn(
    knn_path: Path,
    attributes: dict[str, Any],
    num_rows: int,
    k: int,
    block_size: int,
    blocks: Iterator[tuple[int, np.ndarray, np.ndarray]],
) -> None:
    """Write a kNN file (what `KnnFile` reads, checksummed) from (first store row, neighbours,
    similarities) blocks that cover every store row in order (-1 / NaN rows for skipped images).
    Attributes whose value is None are left out (HDF5 has no null)."""
    with exclusive_writer(knn_path), written_hdf5(knn_path, KNN_COLUMNS) as (knn_file, checksum):
        for name, value in sorted(attributes.items()):
            if value is not None:
                knn_file.attrs[name] = value
        chunk_rows = min(block_size, num_rows)
        neighbours_out = knn_file.create_dataset(
            "neighbours", (num_rows, k), "int64", chunks=(chunk_rows, k), fillvalue=-1, track_times=False
        )
        similarities_out = knn_file.create_dataset(
            "similarities", (num_rows, k), "float32", chunks=(chunk_rows, k), fillvalue=np.nan, track_times=False
        )
        for start, block_neighbours, block_similarities in blocks:
            stop = start + len(block_neighbours)
            neighbours_out[start:stop] = block_neighbours
            similarities_out[start:stop] = block_similarities
            checksum.update("neighbours", block_neighbours)
            checksum.update("similarities", block_similarities)


class KnnFile:
    """Read access to a kNN result; refuses one searched over another store."""

    def __init__(self, path: str | Path, store: EmbeddingStore) -> None:
        self.path = Path(path)
        self.file = open_output(self.path, "kNN file", KNN_COLUMNS, KNN_ATTRIBUTES, remedy="run `facekd index`")
        try:
            check_store_hash(self.path, self.file.attrs["store_provenance_hash"], store)
        except ProvenanceMismatchError:
            self.file.close()
            raise
        self.neighbours = self.file["neighbours"]
        self.similarities = self.file["similarities"]
        self.k = int(self.file.attrs["k"])
        self.view = str(self.file.attrs["view"])
        self.factory = str(self.file.attrs["factory"])

    def verify(self) -> None:
        """Refuse a kNN file whose content no longer matches its checksum (reads the whole file)."""
        verify_columns(self.file, self.path, KNN_COLUMNS, "run `facekd index` again")

    def __enter__(self) -> "KnnFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
