"""The pair table: the hard pairs mined by `facekd mine`, read by training and `facekd pairs`.

HDF5 with one row per (anchor, partner) pair, sorted by (anchor, kind, rank):
  anchor, partner  int64 store rows
  similarity       float32 teacher cosine similarity
  same_identity    uint8
  kind             uint8, 0 = hard negative, 1 = hard positive
  rank             int32, 0 = hardest of its kind for this anchor
  offsets          N + 1 int64: anchor a's pairs are rows offsets[a]:offsets[a + 1]
The bytes are identical for identical inputs (fixed chunks, no timestamps, no track_order). The
table records the checksum of its columns (`PairTable.verify`); it is written by one process at a
time and published only when complete and verified.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from pipeline.checksums import ColumnsChecksum
from pipeline.errors import FacekdError
from pipeline.hdf5 import open_output, verify_columns
from pipeline.stage_one.store import EmbeddingStore, check_store_hash, read_rows

HARD_NEGATIVE, HARD_POSITIVE = 0, 1
KIND_NAMES = ("negative", "positive")
PAIR_COLUMNS = ("anchor", "partner", "similarity", "same_identity", "kind", "rank")
PAIR_DTYPES = ("int64", "int64", "float32", "uint8", "uint8", "int32")
CHECKED_DATASETS = (*PAIR_COLUMNS, "offsets")
PAIR_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class Pairs:
    """Some rows of a pair table, column by column."""

    anchor: np.ndarray
    partner: np.ndarray
    similarity: np.ndarray
    same_identity: np.ndarray
    kind: np.ndarray
    rank: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor)

    def take(self, positions: np.ndarray | slice) -> "Pairs":
        return Pairs(**{column: getattr(self, column)[positions] for column in PAIR_COLUMNS})

    @staticmethod
    def concatenate(parts: list["Pairs"]) -> "Pairs":
        """The rows of `parts` (at least one) one after the other."""
        return Pairs(**{column: np.concatenate([getattr(part, column) for part in parts]) for column in PAIR_COLUMNS})


class PairTableWriter:
    """Appends pair rows to fixed-chunk resizable datasets of a new table, feeding its checksum."""

    def __init__(self, h5file: h5py.File, attributes: dict, checksum: ColumnsChecksum) -> None:
        self.file = h5file
        self.checksum = checksum
        for name, value in sorted(attributes.items()):
            self.file.attrs[name] = value
        self.columns = {
            column: self.file.create_dataset(
                column, (0,), dtype, maxshape=(None,), chunks=(PAIR_CHUNK_ROWS,), track_times=False
            )
            for column, dtype in zip(PAIR_COLUMNS, PAIR_DTYPES)
        }
        self.num_rows = 0

    def append(self, values: dict[str, np.ndarray]) -> None:
        count = len(values["anchor"])
        for column, dataset in self.columns.items():
            dataset.resize((self.num_rows + count,))
            dataset[self.num_rows :] = values[column]
            self.checksum.update(column, np.asarray(values[column], dtype=dataset.dtype))
        self.num_rows += count

    def finish(self, offsets: np.ndarray) -> None:
        self.file.create_dataset("offsets", data=offsets, chunks=None, track_times=False)
        self.checksum.update("offsets", offsets)


class PairTable:
    """Read access to a pair table; `offsets` is in memory, the columns are read as needed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_output(
            self.path, "pair table", CHECKED_DATASETS, ("store_provenance_hash",), remedy="run `facekd mine`"
        )
        self.offsets = self.file["offsets"][:]
        self.attributes = {name: self.file.attrs[name] for name in self.file.attrs}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __enter__(self) -> "PairTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def verify(self) -> None:
        """Refuse a table whose content no longer matches its checksum (reads the whole table)."""
        verify_columns(self.file, self.path, CHECKED_DATASETS, "run `facekd mine` again")

    def check_store(self, store: EmbeddingStore) -> None:
        check_store_hash(self.path, self.attributes["store_provenance_hash"], store)
        if len(self.offsets) != len(store) + 1:
            raise FacekdError(f"{self.path}: has offsets for {len(self.offsets) - 1} images; {store.path} has {len(store)}")

    def partners(self) -> np.ndarray:
        """Every pair's partner, in table order (with `offsets`: each anchor's partners in CSR form)."""
        return self.file["partner"][:]

    def read(self, rows: np.ndarray) -> Pairs:
        """Pair rows (sorted, unique)."""
        return Pairs(**{column: read_rows(self.file[column], rows) for column in PAIR_COLUMNS})

    def read_span(self, rows: np.ndarray) -> Pairs:
        """Pair rows (sorted, unique, not empty) read as one slice from the first to the last: far faster
        than a point selection when they lie within one block."""
        first, last = int(rows[0]), int(rows[-1])
        return Pairs(**{column: self.file[column][first : last + 1][rows - first] for column in PAIR_COLUMNS})

    def rows_of_anchors(self, anchors: np.ndarray) -> np.ndarray:
        """Pair rows of some anchors, sorted."""
        anchors = np.unique(np.asarray(anchors, dtype=np.int64))
        ranges = [np.arange(self.offsets[anchor], self.offsets[anchor + 1]) for anchor in anchors]
        return np.concatenate(ranges) if ranges else np.zeros(0, np.int64)

    def blocks(self, columns: tuple[str, ...], block_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for start in range(0, len(self), block_size):
            yield start, {column: self.file[column][start : start + block_size] for column in columns}
