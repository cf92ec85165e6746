"""The embedding store as a dask worker opens it (`facekd index` and `facekd mine` on workers).

Workers read their own rows from the store instead of receiving vectors through the scheduler, so a
task's arguments stay small (a path, a row range). A worker opens the store on its first task, keeps
it open for the next ones, and refuses a file that is not the store the command started with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FacekdError
from pipeline.stage_one.store import EmbeddingStore


@dataclass(frozen=True)
class StoreFile:
    """The store a dask worker reads: where it is (absolute) and what it must hold."""

    path: str
    provenance_hash: str
    content_checksum: str | None

    @classmethod
    def of(cls, store: EmbeddingStore) -> StoreFile:
        return cls(str(store.path.resolve()), store.provenance_hash, store.content_checksum)


_opened: dict[StoreFile, EmbeddingStore] = {}  # the one store a worker process holds open


def store_on_worker(source: StoreFile) -> EmbeddingStore:
    """The store of `source`, opened and checked on this worker's first task and kept for the next ones."""
    if source not in _opened:
        for store in _opened.values():
            store.close()
        _opened.clear()
        _opened[source] = _opened_checked(source)
    return _opened[source]


def _opened_checked(source: StoreFile) -> EmbeddingStore:
    """The store at `source.path`, refused unless it is the one this command reads."""
    if Path(source.path).is_file():
        store = EmbeddingStore(source.path)
        if (store.provenance_hash, store.content_checksum) == (source.provenance_hash, source.content_checksum):
            return store
        store.close()
    raise FacekdError(
        f"{source.path}: missing on this dask worker, or not the store this command started with (provenance hash "
        f"{source.provenance_hash}, checksum {source.content_checksum}); workers need the same file at the same path"
    )
