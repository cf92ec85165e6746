"""The HDF5 embedding store: one teacher pass over one dataset, reused by every student.

Layout (N images, D dimensions):
  embeddings  N x 2 x D  float16 (image, horizontal flip), chunked by block
  norms       N x 2      float32 L2 norms of the float32 embeddings before rounding
  labels      N          int64 identity labels
  keys        N          utf-8 sample keys
  skipped     N          uint8, 1 where the image could not be decoded and was skipped
  identities  K          utf-8 identity names
  attributes: provenance (teacher sha256, input spec, preprocessing, dataset fingerprint,
              facekd version, counts); dicts and lists are stored as sorted JSON.

Crash safety: a store is written to `<path>.partial` with every chunk allocated up front, so
block writes never move metadata; each finished block is appended to `<path>.partial.blocks`
after its data is flushed. A rerun resumes from that journal, and only a complete store is
renamed to `<path>`. Because the layout is fixed at creation, the final file is byte-identical
whatever the order of block writes or the crashes in between.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.files import partial_name
from pipeline.errors import FacekdError, ProvenanceMismatchError

FORMAT_VERSION = 1
STORE_DTYPES = ("float16", "float32")
# Provenance fields that decide whether a store answers a request; the rest is informational.
IDENTITY_FIELDS = (
    "teacher_sha256",
    "input_spec",
    "preprocessing",
    "resize",
    "dataset_kind",
    "dataset_fingerprint",
    "embedding_dtype",
)


def partial_path(path: Path) -> Path:
    return partial_name(path)


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial.blocks")


def _encode_attribute(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "null"
    return value


def _decode_attribute(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and (value.startswith(("{", "[")) or value == "null"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_provenance(h5file: h5py.File) -> dict[str, Any]:
    return {name: _decode_attribute(h5file.attrs[name]) for name in sorted(h5file.attrs)}


def provenance_hash(provenance: dict[str, Any]) -> str:
    """sha256 of the identity fields as sorted JSON: names a store's inputs in an index or pair table."""
    identity = {field: provenance.get(field) for field in IDENTITY_FIELDS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def describe_differences(found: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Human-readable lines for each identity field that differs."""
    lines = []
    for field in IDENTITY_FIELDS:
        if field in requested and found.get(field) != requested[field]:
            lines.append(f"{field}: store has {found.get(field)!r}, requested {requested[field]!r}")
    return lines


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of a dataset: one slice read when they are dense, else a point selection."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *dataset.shape[1:]), dataset.dtype)
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 <= 2 * len(rows):
        return dataset[first : last + 1][rows - first]
    return dataset[rows]


@dataclass(frozen=True)
class BlockLayout:
    """How N samples split into write blocks (also the HDF5 chunk size along N)."""

    num_samples: int
    block_size: int

    @property
    def num_blocks(self) -> int:
        return -(-self.num_samples // self.block_size)

    def bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_size
        return start, min(start + self.block_size, self.num_samples)


class StoreWriter:
    """Writes finished blocks into a partial store; resumes one left by a crash."""

    def __init__(
        self,
        path: str | Path,
        provenance: dict[str, Any],
        labels: np.ndarray,
        keys: list[str],
        identity_names: list[str],
        embedding_dim: int,
        block_size: int,
        embedding_dtype: str = "float16",
    ) -> None:
        if embedding_dtype not in STORE_DTYPES:
            raise FacekdError(f"embedding dtype is {embedding_dtype!r}; expected one of {', '.join(STORE_DTYPES)}")
        if block_size <= 0:
            raise FacekdError(f"block size is {block_size}; expected a positive integer")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.journal = journal_path(self.path)
        self.layout = BlockLayout(len(keys), block_size)
        # block_size is part of what a partial store means: its journal counts blocks of that size.
        self.provenance = dict(
            provenance, embedding_dtype=embedding_dtype, format_version=FORMAT_VERSION, block_size=block_size
        )
        self.resumed_blocks = self._resume_or_create(labels, keys, identity_names, embedding_dim, embedding_dtype)
        self.finished_blocks = set(self.resumed_blocks)
        try:
            self._file = h5py.File(self.partial, "r+")
        except OSError as error:
            raise FacekdError(f"{self.partial}: cannot open for writing (is another `facekd embed` writing it?) ({error})") from None

    def _resume_or_create(
        self, labels: np.ndarray, keys: list[str], identity_names: list[str], embedding_dim: int, embedding_dtype: str
    ) -> set[int]:
        if self.partial.exists() and self.journal.exists():
            try:
                with h5py.File(self.partial, "r") as existing:
                    same = read_provenance(existing) == self._encoded_provenance()
            except OSError:
                same = False
            if same:
                return self._read_journal()
        self.partial.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create(labels, keys, identity_names, embedding_dim, embedding_dtype)
        self.journal.write_text("")
        return set()

    def _encoded_provenance(self) -> dict[str, Any]:
        return {name: _decode_attribute(_encode_attribute(value)) for name, value in sorted(self.provenance.items())}

    def _create(
        self, labels: np.ndarray, keys: list[str], identity_names: list[str], embedding_dim: int, embedding_dtype: str
    ) -> None:
        num_samples, chunk_rows = self.layout.num_samples, min(self.layout.block_size, self.layout.num_samples)
        with h5py.File(self.partial, "w", libver="earliest") as h5file:
            for name, value in sorted(self.provenance.items()):
                h5file.attrs[name] = _encode_attribute(value)
            preallocated = dict(fill_time="never", dcpl=_early_allocation(), track_times=False)
            h5file.create_dataset(
                "embeddings", (num_samples, 2, embedding_dim), embedding_dtype, chunks=(chunk_rows, 2, embedding_dim),
                **preallocated,
            )
            h5file.create_dataset("norms", (num_samples, 2), "float32", chunks=(chunk_rows, 2), **preallocated)
            h5file.create_dataset("skipped", (num_samples,), "uint8", chunks=(chunk_rows,), **preallocated)
            h5file.create_dataset("labels", data=np.asarray(labels, dtype=np.int64), track_times=False)
            h5file.create_dataset("keys", data=np.asarray(keys, dtype=object), dtype=h5py.string_dtype(), track_times=False)
            h5file.create_dataset(
                "identities", data=np.asarray(identity_names, dtype=object), dtype=h5py.string_dtype(), track_times=False
            )

    def _read_journal(self) -> set[int]:
        # Only newline-terminated lines count: a crash mid-append can leave "1" of "12\n".
        *complete_lines, _torn = self.journal.read_text().split("\n")
        finished = {int(line) for line in complete_lines if line.isdigit()}
        return {block for block in finished if block < self.layout.num_blocks}

    @property
    def pending_blocks(self) -> list[int]:
        return [block for block in range(self.layout.num_blocks) if block not in self.finished_blocks]

    def write_block(self, block: int, embeddings: np.ndarray, norms: np.ndarray, skipped: np.ndarray) -> None:
        """Write one finished block, flush it, then record it in the journal."""
        start, stop = self.layout.bounds(block)
        self._file["embeddings"][start:stop] = embeddings
        self._file["norms"][start:stop] = norms
        self._file["skipped"][start:stop] = skipped
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())
        with open(self.journal, "a") as journal:
            journal.write(f"{block}\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.finished_blocks.add(block)

    def finalize(self) -> Path:
        """Rename the complete store into place; refuses while blocks are missing."""
        if self.pending_blocks:
            raise FacekdError(f"{self.partial}: {len(self.pending_blocks)} blocks are not written yet")
        self._file.close()
        os.replace(self.partial, self.path)
        self.journal.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        """Close without finishing (the partial store stays for a later resume)."""
        if self._file.id.valid:
            self._file.close()


def _early_allocation() -> h5py.h5p.PropDCID:
    """Allocate every chunk when the dataset is created, so the layout never depends on write order."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


class EmbeddingStore:
    """Read access to a complete store, with its provenance."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (a partial store exists: rerun `facekd embed` to finish it)" if partial_path(self.path).exists() else ""
            raise FacekdError(f"{self.path}: embedding store not found{hint}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise FacekdError(f"{self.path}: not a readable HDF5 file ({error})") from None
        missing = [name for name in ("embeddings", "norms", "labels", "keys", "skipped", "identities") if name not in self.file]
        if missing:
            self.file.close()
            raise FacekdError(f"{self.path}: not a facekd embedding store (missing datasets: {', '.join(missing)})")
        self.provenance = read_provenance(self.file)
        self.labels = self.file["labels"][:]
        self.skipped = self.file["skipped"][:].astype(bool)

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def embedding_dim(self) -> int:
        return int(self.file["embeddings"].shape[2])

    @property
    def keys(self) -> list[str]:
        return [key.decode() for key in self.file["keys"][:]]

    @property
    def identity_names(self) -> list[str]:
        return [name.decode() for name in self.file["identities"][:]]

    @property
    def embeddings(self) -> h5py.Dataset:
        """The N x 2 x D dataset itself, for block-wise reading."""
        return self.file["embeddings"]

    @property
    def provenance_hash(self) -> str:
        return provenance_hash(self.provenance)

    def keys_at(self, rows: np.ndarray) -> list[str]:
        """Keys of some rows, without reading every key (a store can hold millions)."""
        unique_rows, positions = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        found = self.file["keys"][unique_rows] if len(unique_rows) else []
        return [found[position].decode() for position in positions.reshape(-1)]

    def row_of_key(self, key: str, block_size: int = 1 << 20) -> int:
        """The row holding `key`, scanning the keys block by block."""
        wanted, keys = key.encode(), self.file["keys"]
        for start in range(0, len(keys), block_size):
            hits = np.flatnonzero(keys[start : start + block_size] == wanted)
            if len(hits):
                return start + int(hits[0])
        raise FacekdError(f"{self.path}: no image with key {key!r}")

    def read_embeddings(self) -> np.ndarray:
        return self.file["embeddings"][:]

    def read_norms(self) -> np.ndarray:
        return self.file["norms"][:]

    def check_matches(self, requested: dict[str, Any]) -> None:
        """Refuse a store built from another teacher, preprocessing or dataset than `requested`."""
        differences = describe_differences(self.provenance, requested)
        if differences:
            raise ProvenanceMismatchError(
                f"{self.path}: this store was built from other inputs than requested:\n  " + "\n  ".join(differences)
            )


def store_is_complete_for(path: str | Path, requested: dict[str, Any]) -> bool:
    """True when a complete store at `path` was built from exactly the requested inputs."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with EmbeddingStore(path) as store:
            return not describe_differences(store.provenance, requested)
    except FacekdError:
        return False
