"""A dataset's keys as two arrays, one UTF-8 buffer and the offsets into it, instead of a Python list.

A list of a million short keys is ~100 MB of string objects, and pickling it to each dask worker
sends and rebuilds them one by one. These arrays cost the encoded bytes plus 8 bytes a key, and
pickle as two buffers.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class PackedStrings(Sequence[str]):
    """An immutable sequence of strings, read back one at a time from `buffer[offsets[i]:offsets[i + 1]]`."""

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [string.encode() for string in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=self._offsets[1:])
        self._buffer = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"key index {index} out of range for {len(self)} keys")
        return self._buffer[self._offsets[position] : self._offsets[position + 1]].decode()

    def __iter__(self) -> Iterator[str]:
        buffer, bounds = self._buffer, self._offsets.tolist()
        return (buffer[start:stop].decode() for start, stop in zip(bounds, bounds[1:]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(mine == theirs for mine, theirs in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        shown = ", ".join(map(repr, self[:3]))
        return f"PackedStrings([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} keys)"
