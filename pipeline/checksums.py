"""Content checksums: a published output records one, and a reader that reuses it checks it.

blake2b (128 bits) from the standard library: xxhash would be faster but is not a dependency,
and hashing costs far less than the teacher pass or the search that made the data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

CHECKSUM_LENGTH = 32  # hex characters


def new_checksum() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=CHECKSUM_LENGTH // 2)


def file_checksum(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Checksum of a whole file's bytes, read in chunks."""
    checksum = new_checksum()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            checksum.update(chunk)
    return checksum.hexdigest()


class ColumnsChecksum:
    """Checksum of named arrays fed in row blocks; the result does not depend on the block sizes."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.columns = {name: new_checksum() for name in names}

    def update(self, name: str, values: np.ndarray) -> None:
        self.columns[name].update(np.ascontiguousarray(values).tobytes())

    def hexdigest(self) -> str:
        combined = new_checksum()
        for name, checksum in self.columns.items():
            combined.update(f"{name}:{checksum.hexdigest()}\n".encode())
        return combined.hexdigest()
