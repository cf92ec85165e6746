"""The HDF5 embedding store: one teacher pass over one dataset, reused by every student.

Layout (N images, D dimensions):
  embeddings  N x 2 x D  float16 (image, horizontal flip), chunked by block
  norms       N x 2      float32 L2 norms of the float32 embeddings before rounding
  labels      N          int64 identity labels
  keys        N          utf-8 sample keys
  skipped     N          uint8, 1 where the image could not be decoded and was skipped
  identities  K          utf-8 identity names
  attributes: provenance (teacher sha256, input spec, preprocessing, dataset fingerprint,
              facekd version, counts); dicts and lists are stored as sorted JSON;
              content_blake2b, the checksum of all the above datasets (`EmbeddingStore.verify`).

Crash safety: a store is written to `<path>.partial` with every chunk allocated (and its disk
space reserved) up front, so block writes never move metadata and a full disk or a file-size
limit shows at the start; each finished block is appended with its checksum to
`<path>.partial.blocks` after its data is flushed. A rerun resumes from the blocks of that journal
whose data still matches its checksum. Only a complete store whose every block reads back as
written is given its whole-content checksum (attribute `content_blake2b`), synced and renamed to
`<path>`; reuse and `facekd store info --verify` check that checksum. Because the layout is fixed
at creation, the final file is byte-identical whatever the order of block writes or the crashes
in between. Files are opened without HDF5's chunk cache, so a failed write fails at the write
call (HDF5 reporting it later, while freeing a cached chunk, crashes the process).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.checksums import CHECKSUM_LENGTH, new_checksum
from pipeline.errors import FacekdError, ProvenanceMismatchError
from pipeline.files import check_room, partial_name, publish, storage_error, write_text_atomically
from pipeline.hdf5 import CHECKSUM_ATTRIBUTE, open_output, recorded_checksum

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: block checksums in the journal, whole-content checksum attribute
UNSET_CHECKSUM = np.bytes_(b"-" * CHECKSUM_LENGTH)  # same size as a checksum: set in place when published
STORE_DTYPES = ("float16", "float32")
STORE_DATASETS = ("embeddings", "norms", "labels", "keys", "skipped", "identities")
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
    return {name: _decode_attribute(h5file.attrs[name]) for name in sorted(h5file.attrs) if name != CHECKSUM_ATTRIBUTE}


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


def block_checksum(embeddings: np.ndarray, norms: np.ndarray, skipped: np.ndarray) -> str:
    """Checksum of one block's rows as stored."""
    checksum = new_checksum()
    for values in (embeddings, norms, skipped):
        checksum.update(np.ascontiguousarray(values).tobytes())
    return checksum.hexdigest()


def read_block_checksum(h5file: h5py.File, layout: BlockLayout, block: int) -> str:
    start, stop = layout.bounds(block)
    return block_checksum(h5file["embeddings"][start:stop], h5file["norms"][start:stop], h5file["skipped"][start:stop])


def store_checksum(block_checksums: list[str], labels: np.ndarray, keys: Sequence[str], identity_names: list[str]) -> str:
    """Checksum of a whole store: its blocks in order, then its labels, keys and identity names."""
    checksum = new_checksum()
    for value in block_checksums:
        checksum.update(value.encode())
    checksum.update(np.asarray(labels, dtype=np.int64).tobytes())
    checksum.update("\n".join(keys).encode() + b"\0" + "\n".join(identity_names).encode())
    return checksum.hexdigest()


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """True for each row (first axis) holding a NaN or an infinity."""
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def some_keys(keys: list[str], total: int) -> str:
    """A few keys for a message, and how many more there are."""
    more = f" and {total - len(keys)} more" if total > len(keys) else ""
    return ", ".join(keys) + more


class StoreWriter:
    """Writes finished blocks into a partial store; resumes one left by a crash."""

    def __init__(
        self,
        path: str | Path,
        provenance: dict[str, Any],
        labels: np.ndarray,
        keys: Sequence[str],
        identity_names: list[str],
        embedding_dim: int,
        block_size: int,
        embedding_dtype: str,
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
        self.embedding_dtype = embedding_dtype
        self.finished_blocks: dict[int, str] = {}  # block -> checksum of its rows
        self.finished_blocks = self._resume_or_create(labels, keys, identity_names, embedding_dim)
        self.resumed_blocks = set(self.finished_blocks)
        self._content = (np.asarray(labels, dtype=np.int64), keys, list(identity_names))  # a million keys: no copy
        try:
            self._file = h5py.File(self.partial, "r+", rdcc_nbytes=0)
        except OSError as error:
            raise self._failure(error) from None
        self._datasets = {name: self._file[name] for name in ("embeddings", "norms", "skipped")}

    def _failure(self, error: OSError) -> FacekdError:
        """The one-line error for an I/O failure; the finished blocks stay for a rerun."""
        return storage_error(
            self.partial, error,
            f"{len(self.finished_blocks)} finished blocks are kept: free space (or raise the limit) and rerun to resume",
        )

    def _resume_or_create(
        self, labels: np.ndarray, keys: Sequence[str], identity_names: list[str], embedding_dim: int
    ) -> dict[int, str]:
        if self.partial.exists() and self.journal.exists():
            try:
                with h5py.File(self.partial, "r", rdcc_nbytes=0) as existing:
                    if read_provenance(existing) == self._encoded_provenance():
                        return self._verified_journal(existing)
            except OSError:
                pass  # unreadable: start again
        self.partial.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_room(self.partial, self._estimated_bytes(keys, identity_names, embedding_dim), "nothing was kept")
        try:
            self._create(labels, keys, identity_names, embedding_dim)
            reserve_space(self.partial)
            self.journal.write_text("")
        except (OSError, RuntimeError) as error:  # h5py raises RuntimeError for some failed writes at close
            self.partial.unlink(missing_ok=True)
            self.journal.unlink(missing_ok=True)
            raise storage_error(self.partial, error, "nothing was kept") from None
        return {}

    def _estimated_bytes(self, keys: Sequence[str], identity_names: list[str], embedding_dim: int) -> int:
        """An upper estimate of the store's size: its data, its strings on HDF5's heap, and room for metadata."""
        num_samples = self.layout.num_samples
        data = num_samples * (2 * embedding_dim * np.dtype(self.embedding_dtype).itemsize + 2 * 4 + 1 + 8)
        strings = sum(len(text.encode()) + 48 for text in (*keys, *identity_names))
        return data + strings + (1 << 16)

    def _verified_journal(self, existing: h5py.File) -> dict[int, str]:
        """Journal blocks whose data still matches their checksum; the journal is rewritten with just those."""
        verified = {
            block: checksum for block, checksum in self._read_journal().items()
            if read_block_checksum(existing, self.layout, block) == checksum
        }
        write_text_atomically(self.journal, "".join(f"{block} {checksum}\n" for block, checksum in sorted(verified.items())))
        return verified

    def _encoded_provenance(self) -> dict[str, Any]:
        return {name: _decode_attribute(_encode_attribute(value)) for name, value in sorted(self.provenance.items())}

    def _create(self, labels: np.ndarray, keys: Sequence[str], identity_names: list[str], embedding_dim: int) -> None:
        num_samples, chunk_rows = self.layout.num_samples, min(self.layout.block_size, self.layout.num_samples)
        with h5py.File(self.partial, "w", libver="earliest", rdcc_nbytes=0) as h5file:
            for name, value in sorted(self.provenance.items()):
                h5file.attrs[name] = _encode_attribute(value)
            h5file.attrs[CHECKSUM_ATTRIBUTE] = UNSET_CHECKSUM
            preallocated = dict(fill_time="never", dcpl=_early_allocation(), track_times=False)
            h5file.create_dataset(
                "embeddings", (num_samples, 2, embedding_dim), self.embedding_dtype,
                chunks=(chunk_rows, 2, embedding_dim), **preallocated,
            )
            h5file.create_dataset("norms", (num_samples, 2), "float32", chunks=(chunk_rows, 2), **preallocated)
            h5file.create_dataset("skipped", (num_samples,), "uint8", chunks=(chunk_rows,), **preallocated)
            h5file.create_dataset("labels", data=np.asarray(labels, dtype=np.int64), track_times=False)
            h5file.create_dataset("keys", data=np.asarray(keys, dtype=object), dtype=h5py.string_dtype(), track_times=False)
            h5file.create_dataset(
                "identities", data=np.asarray(identity_names, dtype=object), dtype=h5py.string_dtype(), track_times=False
            )

    def _read_journal(self) -> dict[int, str]:
        """Finished blocks and their checksums; a line torn by a crash (no newline) does not count."""
        *complete_lines, _torn = self.journal.read_text().split("\n")
        finished = {}
        for line in complete_lines:
            block, _, checksum = line.partition(" ")
            if block.isdigit() and int(block) < self.layout.num_blocks and len(checksum) == CHECKSUM_LENGTH:
                finished[int(block)] = checksum
        return finished

    @property
    def pending_blocks(self) -> list[int]:
        return [block for block in range(self.layout.num_blocks) if block not in self.finished_blocks]

    def write_block(self, block: int, embeddings: np.ndarray, norms: np.ndarray, skipped: np.ndarray) -> None:
        """Write one finished block, flush it, then record it and its checksum in the journal."""
        start, stop = self.layout.bounds(block)
        values = {
            "embeddings": np.ascontiguousarray(embeddings, dtype=self.embedding_dtype),
            "norms": np.ascontiguousarray(norms, dtype=np.float32),
            "skipped": np.ascontiguousarray(skipped, dtype=np.uint8),
        }
        checksum = block_checksum(values["embeddings"], values["norms"], values["skipped"])
        try:
            for name, dataset in self._datasets.items():
                dataset[start:stop] = values[name]
            self._file.flush()
            os.fsync(self._file.id.get_vfd_handle())
            with open(self.journal, "a") as journal:
                journal.write(f"{block} {checksum}\n")
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as error:
            raise self._failure(error) from None
        self.finished_blocks[block] = checksum

    def finalize(self) -> Path:
        """Check every block reads back as written, record the store's checksum, publish it atomically."""
        if self.pending_blocks:
            raise FacekdError(f"{self.partial}: {len(self.pending_blocks)} blocks are not written yet")
        try:
            self._close_file()
            with h5py.File(self.partial, "r+", rdcc_nbytes=0) as h5file:
                for block, checksum in sorted(self.finished_blocks.items()):
                    if read_block_checksum(h5file, self.layout, block) != checksum:
                        start, stop = self.layout.bounds(block)
                        raise FacekdError(
                            f"{self.partial}: rows {start}-{stop - 1} read back differently from what was written "
                            "(unreliable storage); rerun to write them again"
                        )
                checksums = [checksum for _, checksum in sorted(self.finished_blocks.items())]
                h5file.attrs.modify(CHECKSUM_ATTRIBUTE, np.bytes_(store_checksum(checksums, *self._content).encode()))
            publish(self.partial, self.path)
            self.journal.unlink(missing_ok=True)
        except OSError as error:
            raise self._failure(error) from None
        return self.path

    def _close_file(self) -> None:
        if self._file.id.valid:
            self._datasets.clear()
            self._file.close()

    def close(self) -> None:
        """Close without finishing (the partial store stays for a later resume)."""
        try:
            self._close_file()
        except OSError:
            pass  # the failure that stopped the writing was already reported; the journal decides what is kept


def reserve_space(path: Path) -> None:
    """Allocate the disk space of a created store now, so a full disk shows before any teacher work."""
    with open(path, "r+b") as stream:
        try:
            os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def _early_allocation() -> h5py.h5p.PropDCID:
    """Allocate every chunk when the dataset is created, so the layout never depends on write order."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


class EmbeddingStore:
    """Read access to a complete store, with its provenance."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        partial = partial_path(self.path).exists()
        remedy = "a partial store exists: rerun `facekd embed` to finish it" if partial else "run `facekd embed`"
        self.file = open_output(self.path, "embedding store", STORE_DATASETS, remedy=remedy)
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
        return np.array([key.decode() for key in found], dtype=object)[positions.reshape(-1)].tolist()

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

    @property
    def content_checksum(self) -> str | None:
        """The checksum recorded when the store was published (None: written by an older facekd)."""
        recorded = recorded_checksum(self.file)
        return None if recorded is None or recorded.encode() == UNSET_CHECKSUM else recorded

    def verify(self) -> None:
        """Refuse a store whose content no longer matches the checksum recorded when it was published."""
        recorded = self.content_checksum
        if recorded is None:
            raise FacekdError(f"{self.path}: has no content checksum (written by an older facekd); embed it again")
        layout = BlockLayout(len(self), int(self.provenance["block_size"]))
        try:
            checksums = [read_block_checksum(self.file, layout, block) for block in range(layout.num_blocks)]
            found = store_checksum(checksums, self.labels, self.keys, self.identity_names)
        except OSError as error:
            raise FacekdError(f"{self.path}: unreadable ({str(error).splitlines()[0]}); the file is damaged") from None
        if found != recorded:
            raise FacekdError(
                f"{self.path}: content does not match its checksum {recorded} (the file is damaged); "
                "delete it and run `facekd embed` again"
            )

    def check_matches(self, requested: dict[str, Any]) -> None:
        """Refuse a store built from another teacher, preprocessing or dataset than `requested`."""
        differences = describe_differences(self.provenance, requested)
        if differences:
            raise ProvenanceMismatchError(
                f"{self.path}: this store was built from other inputs than requested:\n  " + "\n  ".join(differences)
            )


def check_store_hash(path: str | Path, recorded_hash: str, store: EmbeddingStore) -> None:
    """Refuse an artefact (index, kNN file, pair table) built from another store than `store`."""
    if recorded_hash != store.provenance_hash:
        raise ProvenanceMismatchError(
            f"{path} was built from a store with provenance hash {recorded_hash}, but {store.path} has "
            f"provenance hash {store.provenance_hash}; rebuild it from this store"
        )


def check_finite_rows(store: EmbeddingStore, block_size: int) -> None:
    """Refuse a store with NaN or infinite values in an image's embeddings or norms (they poison every similarity).

    One streaming pass, `block_size` rows at a time; skipped images (all zeros) are not looked at.
    """
    bad_rows = []
    for start in range(0, len(store), block_size):
        stop = min(start + block_size, len(store))
        nonfinite = nonfinite_rows(store.embeddings[start:stop]) | nonfinite_rows(store.file["norms"][start:stop])
        bad_rows.append(start + np.flatnonzero(nonfinite & ~store.skipped[start:stop]))
    bad = np.concatenate(bad_rows) if bad_rows else np.zeros(0, np.int64)
    if len(bad):
        raise FacekdError(
            f"{store.path}: {len(bad)} images have non-finite (NaN or infinite) embeddings: "
            f"{some_keys(store.keys_at(bad[:5]), len(bad))}; embed them again (with `embed.dtype: float32` "
            "if the teacher's outputs exceed the float16 range)"
        )


def store_is_complete_for(path: str | Path, requested: dict[str, Any]) -> bool:
    """True when a complete store at `path` was built from exactly the requested inputs and is intact.

    A store that fails its checksum is not complete: it is reported and embedded again.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with EmbeddingStore(path) as store:
            if describe_differences(store.provenance, requested):
                return False
            store.verify()
            return True
    except FacekdError as error:
        log.warning("%s; embedding again", error)
        return False
