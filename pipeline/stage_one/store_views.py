"""The unit vectors stage one searches and mines, read from the embedding store.

A store row holds two un-normalised embeddings (image, horizontal flip). The `view` picks what a
row stands for: "image" is the image's embedding (store view 0), so a pair's score is exactly the
T_ij that RPSD computes for unflipped images; "mean" is normalise(image + flip), the embedding
the verification protocol uses. Inner product on unit vectors is cosine. Skipped images are never
searched or mined: `usable_rows` are the others, and the r-th of them is index row r.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.errors import FacekdError
from pipeline.stage_one.store import EmbeddingStore, read_rows

VIEWS = ("image", "mean")


def usable_rows(store: EmbeddingStore) -> np.ndarray:
    """Store rows that are indexed and mined: every image that was not skipped."""
    return np.flatnonzero(~store.skipped)


def unit_vectors(embeddings: np.ndarray, view: str) -> np.ndarray:
    """n x 2 x D store rows -> n x D float32 unit vectors of `view` ("image" or "mean")."""
    if view not in VIEWS:
        raise FacekdError(f"view is {view!r}; expected one of {', '.join(VIEWS)}")
    embeddings = embeddings.astype(np.float32)
    vectors = embeddings[:, 0] if view == "image" else embeddings.sum(axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, np.finfo(np.float32).tiny))


def iter_unit_vectors(
    store: EmbeddingStore, view: str, block_size: int, first: int = 0, end: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(usable store rows, their unit vectors) block by block, in store order, rows [first, end)."""
    end = len(store) if end is None else min(end, len(store))
    for start in range(first, end, block_size):
        stop = min(start + block_size, end)
        usable = ~store.skipped[start:stop]
        if usable.any():
            yield start + np.flatnonzero(usable), unit_vectors(store.embeddings[start:stop][usable], view)


def read_unit_vectors(store: EmbeddingStore, rows: np.ndarray, view: str) -> np.ndarray:
    """Unit vectors of some store rows (sorted, unique)."""
    return unit_vectors(read_rows(store.embeddings, rows), view)
