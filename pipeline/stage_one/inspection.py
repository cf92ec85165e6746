"""What `facekd store info` and `facekd pairs ...` show: embedding-norm statistics of a store, the
identity pairs that suspicious image pairs join (candidates for merging), and the images behind a
store's rows."""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from pipeline.data.dataset import KeyedImages
from pipeline.data.open import open_keyed_images
from pipeline.errors import FacekdError
from pipeline.stage_one.pair_table import Pairs
from pipeline.stage_one.store import EmbeddingStore

NORM_STATISTICS = ("min", "p1", "median", "mean", "p99", "max", "std")


def norm_statistics(norms: np.ndarray, skipped: np.ndarray) -> dict[str, dict[str, float]]:
    """Per view (image, flip) of the embedded rows: min, p1, median, mean, p99, max and std of the norms."""
    statistics = {}
    for view, column in (("image", 0), ("flip", 1)):
        values = norms[~skipped, column]
        if len(values) == 0:
            continue
        p1, median, p99 = np.percentile(values, [1, 50, 99])
        statistics[view] = dict(zip(
            NORM_STATISTICS, (float(values.min()), p1, median, float(values.mean()), p99, float(values.max()), float(values.std()))
        ))
    return statistics


@dataclass(frozen=True)
class IdentityPair:
    low: int  # the smaller label
    high: int
    image_pairs: int
    max_similarity: float


def identity_pairs(found: Pairs, labels: np.ndarray, count: int) -> list[IdentityPair]:
    """The `count` identity pairs with the most suspicious image pairs (ties: the most similar first).

    `found` is sorted by similarity, so an identity pair's first image pair is its most similar.
    """
    pair_labels = np.sort(np.stack([labels[found.anchor], labels[found.partner]], axis=1), axis=1)
    unique, first, pair_counts = np.unique(pair_labels, axis=0, return_index=True, return_counts=True)
    by_count = np.lexsort((first, -pair_counts))[:count]
    return [
        IdentityPair(int(unique[position][0]), int(unique[position][1]), int(pair_counts[position]),
                     float(found.similarity[first[position]]))
        for position in by_count
    ]


def anchor_rows(store: EmbeddingStore, identity: str | None, image: str | None) -> np.ndarray | None:
    """The store rows of the image with key `image`, or of the identity named `identity`; None: every row."""
    if image is not None:
        return np.array([store.row_of_key(image)])
    if identity is not None:
        names = store.identity_names
        if identity not in names:
            raise FacekdError(f"{store.path}: no identity named {identity!r}")
        return np.flatnonzero(store.labels == names.index(identity))
    return None


def embedded_images(store: EmbeddingStore, dataset_path: str | None) -> KeyedImages:
    """The images the store was embedded from (`dataset_path`, else its provenance's dataset_root), found
    by the store's keys: the dataset is not listed, so showing a few of a million images is quick."""
    dataset_path = dataset_path or store.provenance.get("dataset_root")
    if not dataset_path:
        raise FacekdError(f"{store.path}: its provenance names no dataset_root; pass --dataset")
    return open_keyed_images(dataset_path, store.provenance["dataset_kind"])
