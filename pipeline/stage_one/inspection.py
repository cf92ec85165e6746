"""What `facekd store info` and `facekd pairs ...` show: embedding-norm statistics of a store, the
identity pairs that suspicious image pairs join (candidates for merging), and the images behind a
store's rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.data.dataset import KeyedImages
from pipeline.data.open import open_keyed_images
from pipeline.errors import FacekdError
from pipeline.stage_one.pair_queries import SUSPICIOUS_ROWS_PER_PASS, suspicious_pair_passes, write_pairs_csv
from pipeline.stage_one.pair_table import Pairs, PairTable
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


class IdentityPairTally:
    """The identity pairs that suspicious image pairs join, counted over parts given most similar first (the
    passes of `suspicious_pair_passes`): it holds one entry per identity pair, not per image pair."""

    def __init__(self, num_identities: int) -> None:
        self.num_identities = num_identities
        self.keys = np.zeros(0, np.int64)  # low label * num_identities + high label, ascending
        self.counts = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.int64)  # position of the identity pair's first image pair over all parts
        self.max_similarity = np.zeros(0, np.float32)  # that first image pair's similarity
        self.pairs_seen = 0

    def add(self, part: Pairs, labels: np.ndarray) -> None:
        low, high = np.sort(np.stack([labels[part.anchor], labels[part.partner]]), axis=0)
        keys, first, counts = np.unique(low * self.num_identities + high, return_index=True, return_counts=True)
        similarity = np.concatenate([self.max_similarity, part.similarity[first]])
        first = np.concatenate([self.first, self.pairs_seen + first])
        keys, counts = np.concatenate([self.keys, keys]), np.concatenate([self.counts, counts])
        order = np.argsort(keys, kind="stable")  # among equal keys the earlier part's entry stays first
        keys, counts, first, similarity = keys[order], counts[order], first[order], similarity[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        self.keys, self.first, self.max_similarity = keys[starts], first[starts], similarity[starts]
        self.counts = np.add.reduceat(counts, starts) if len(keys) else counts
        self.pairs_seen += len(part)

    def most_joined(self, count: int) -> list[IdentityPair]:
        """The `count` identity pairs with the most suspicious image pairs (ties: the most similar first)."""
        by_count = np.lexsort((self.first, -self.counts))[:count]
        return [
            IdentityPair(int(self.keys[position] // self.num_identities), int(self.keys[position] % self.num_identities),
                         int(self.counts[position]), float(self.max_similarity[position]))
            for position in by_count
        ]


@dataclass(frozen=True)
class SuspiciousOverview:
    """What `facekd pairs suspicious` shows."""

    total: int
    most_similar: Pairs  # the first pairs, most similar first
    identity_pairs: list[IdentityPair]


def suspicious_overview(
    table: PairTable, store: EmbeddingStore, threshold: float, shown: int, csv_path: str | Path | None = None,
    rows_per_pass: int = SUSPICIOUS_ROWS_PER_PASS,
) -> SuspiciousOverview:
    """How many suspicious pairs `table` holds at `threshold`, the `shown` most similar, the `shown` identity pairs
    with the most of them, and (given `csv_path`) every pair as CSV: one streamed walk over the passes, so memory
    is bounded by a pass and the identity pairs, whatever the number of suspicious pairs."""
    tally, heads = IdentityPairTally(len(store.identity_names)), [table.read(np.zeros(0, np.int64))]

    def walked() -> Iterator[Pairs]:
        for part in suspicious_pair_passes(table, threshold, rows_per_pass):
            heads.append(part.take(slice(0, max(shown - tally.pairs_seen, 0))))
            tally.add(part, store.labels)
            yield part

    if csv_path is None:
        for _ in walked():
            pass
    else:
        write_pairs_csv(csv_path, walked(), store)
    return SuspiciousOverview(tally.pairs_seen, Pairs.concatenate(heads), tally.most_joined(shown))


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
