"""Hard-pair mining from the teacher's kNN result, and the pair table it writes.

Hard negatives of an anchor: its kNN neighbours of another identity, highest teacher similarity
first. Hard positives: the images of its own identity with the lowest teacher similarity, exact
(each identity's similarity matrix, computed in row blocks so a huge identity stays bounded).

The pair table (HDF5) has one row per (anchor, partner) pair, sorted by (anchor, kind, rank):
  anchor, partner  int64 store rows
  similarity       float32 teacher cosine similarity
  same_identity    uint8
  kind             uint8, 0 = hard negative, 1 = hard positive
  rank             int32, 0 = hardest of its kind for this anchor
  offsets          N + 1 int64: anchor a's pairs are rows offsets[a]:offsets[a + 1]
The bytes are identical for identical inputs (fixed chunks, no timestamps, no track_order). The
table records the checksum of its columns (`PairTable.verify`); it is written by one process at a
time and published only when complete and verified, as are the CSV and JSON side outputs.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.checksums import ColumnsChecksum
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer, write_text_atomically, written_atomically
from pipeline.hdf5 import verify_columns, written_hdf5
from pipeline.stage_one.index import KnnFile, check_store_hash, read_unit_vectors, usable_rows
from pipeline.stage_one.store import EmbeddingStore, check_finite_rows, read_rows

HARD_NEGATIVE, HARD_POSITIVE = 0, 1
KIND_NAMES = ("negative", "positive")
PAIR_COLUMNS = ("anchor", "partner", "similarity", "same_identity", "kind", "rank")
PAIR_DTYPES = ("int64", "int64", "float32", "uint8", "uint8", "int32")
CHECKED_DATASETS = (*PAIR_COLUMNS, "offsets")
PAIR_CHUNK_ROWS = 65536
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
PERCENTILE_GRID_BINS = 2000  # percentiles are read to 0.001 from a grid over [-1, 1]
SIMILARITY_BUDGET = 1 << 24  # entries of one block of an identity's similarity matrix (64 MiB)


def hard_negatives(
    neighbours: np.ndarray, similarities: np.ndarray, anchor_labels: np.ndarray, labels: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's first `count` neighbours of another identity (n x count, -1 / NaN padded).

    `neighbours` are store rows in decreasing similarity, -1 where missing; `labels` are every row's.
    """
    other_identity = (neighbours >= 0) & (labels[np.maximum(neighbours, 0)] != anchor_labels[:, None])
    order = np.argsort(~other_identity, axis=1, kind="stable")[:, :count]
    kept = np.take_along_axis(other_identity, order, axis=1)
    partners = np.where(kept, np.take_along_axis(neighbours, order, axis=1), -1)
    return partners, np.where(kept, np.take_along_axis(similarities, order, axis=1), np.nan).astype(np.float32)


def lowest_similarities(vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of m unit vectors, the `count` others with the lowest similarity (positions, similarities).

    Ascending similarity, ties by position; min(count, m - 1) columns.
    """
    num_vectors = len(vectors)
    taken = min(count, num_vectors - 1)
    positions = np.zeros((num_vectors, max(taken, 0)), np.int64)
    similarities = np.zeros((num_vectors, max(taken, 0)), np.float32)
    if taken <= 0:
        return positions, similarities
    step = max(1, SIMILARITY_BUDGET // num_vectors)
    for start in range(0, num_vectors, step):
        stop = min(start + step, num_vectors)
        block = vectors[start:stop] @ vectors.T
        block[np.arange(stop - start), np.arange(start, stop)] = np.inf  # never the anchor itself
        lowest = np.argpartition(block, taken - 1, axis=1)[:, :taken]
        lowest_similarities = np.take_along_axis(block, lowest, axis=1)
        order = np.lexsort((lowest, lowest_similarities))
        positions[start:stop] = np.take_along_axis(lowest, order, axis=1)
        similarities[start:stop] = np.take_along_axis(lowest_similarities, order, axis=1)
    return positions, similarities


def hard_positives(
    store: EmbeddingStore, view: str, count: int, batch_rows: int = 65536, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Every usable row's `count` least similar images of its own identity (N x count, -1 / NaN padded).

    Identities are read in batches of about `batch_rows` images; memory is bounded by the batch
    plus one block of the largest identity's similarity matrix.
    """
    partners = np.full((len(store), count), -1, np.int64)
    similarities = np.full((len(store), count), np.nan, np.float32)
    rows = usable_rows(store)
    by_label = np.argsort(store.labels[rows], kind="stable")
    identities = np.split(rows[by_label], np.flatnonzero(np.diff(store.labels[rows][by_label])) + 1)
    bar = tqdm(total=len(rows), unit="img", desc="hard positives", disable=not progress)
    for batch in _batches(identities, batch_rows):
        batch_store_rows = np.sort(np.concatenate(batch))
        vectors = read_unit_vectors(store, batch_store_rows, view)
        for identity_rows in batch:
            positions, identity_similarities = lowest_similarities(
                vectors[np.searchsorted(batch_store_rows, identity_rows)], count
            )
            taken = positions.shape[1]
            partners[identity_rows, :taken] = identity_rows[positions]
            similarities[identity_rows, :taken] = identity_similarities
        bar.update(len(batch_store_rows))
    bar.close()
    return partners, similarities


def _batches(identities: list[np.ndarray], batch_rows: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    size = 0
    for identity_rows in identities:
        batch.append(identity_rows)
        size += len(identity_rows)
        if size >= batch_rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class SimilarityDistribution:
    """Streaming statistics of similarities in [-1, 1], memory independent of the number of pairs.

    `histogram` has the user's bins (for plots); mean is exact; percentiles are interpolated on a
    grid of 0.001.
    """

    def __init__(self, bins: int) -> None:
        self.edges = np.linspace(-1.0, 1.0, bins + 1)
        self.histogram = np.zeros(bins, np.int64)
        self.grid_edges = np.linspace(-1.0, 1.0, PERCENTILE_GRID_BINS + 1)
        self.grid = np.zeros(PERCENTILE_GRID_BINS, np.int64)
        self.count = 0
        self.total = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.clip(values, -1.0, 1.0)
        self.histogram += np.histogram(values, self.edges)[0]
        self.grid += np.histogram(values, self.grid_edges)[0]
        self.count += len(values)
        self.total += float(values.sum(dtype=np.float64))

    def percentile(self, q: float) -> float:
        cumulative = np.cumsum(self.grid)
        target = q / 100 * self.count
        bin_index = min(int(np.searchsorted(cumulative, target)), len(self.grid) - 1)
        before = cumulative[bin_index] - self.grid[bin_index]
        fraction = (target - before) / self.grid[bin_index] if self.grid[bin_index] else 0.0
        low, high = self.grid_edges[bin_index], self.grid_edges[bin_index + 1]
        return float(low + fraction * (high - low))

    def summary(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"pairs": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
        statistics = {f"p{q}": round(self.percentile(q), 4) for q in PERCENTILES}
        return {"pairs": self.count, "mean": round(self.total / self.count, 4), **statistics}


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


@dataclass(frozen=True)
class MiningSummary:
    pairs_path: Path
    num_images: int
    num_anchors: int
    knn_k: int
    anchors_without_negatives: int
    negatives: SimilarityDistribution
    positives: SimilarityDistribution
    suspicious_threshold: float
    suspicious: Pairs

    def metrics(self) -> dict:
        """The numbers DVC tracks as metrics (mining_summary.json)."""
        return {
            "images": self.num_images,
            "anchors": self.num_anchors,
            "skipped_images": self.num_images - self.num_anchors,
            "knn_k": self.knn_k,
            "anchors_without_hard_negatives": self.anchors_without_negatives,
            "hard_negatives": self.negatives.summary(),
            "hard_positives": self.positives.summary(),
            "suspicious_threshold": self.suspicious_threshold,
            "suspicious_pairs": len(self.suspicious),
        }


class _PairTableWriter:
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


def mine_pairs(
    store: EmbeddingStore,
    knn_path: str | Path,
    pairs_path: str | Path,
    *,
    hard_negatives_per_anchor: int = 8,
    hard_positives_per_anchor: int = 4,
    suspicious_threshold: float = 0.7,
    histogram_bins: int = 50,
    block_size: int = 65536,
    progress: bool = True,
) -> MiningSummary:
    """Mine hard negatives (from the kNN file) and hard positives (exact) into the pair table at `pairs_path`."""
    pairs_path = Path(pairs_path)
    if hard_positives_per_anchor < 0:
        raise FacekdError(f"hard_positives_per_anchor is {hard_positives_per_anchor}; expected 0 or more")
    check_finite_rows(store, block_size)
    with exclusive_writer(pairs_path), KnnFile(knn_path, store) as knn:
        if not 1 <= hard_negatives_per_anchor <= knn.k:
            raise FacekdError(
                f"hard_negatives_per_anchor is {hard_negatives_per_anchor}; expected 1 .. {knn.k}, the number of "
                f"neighbours per image in {knn.path} (search more with index.knn_k)"
            )
        knn.verify()
        positives, positive_similarities = hard_positives(store, knn.view, hard_positives_per_anchor, block_size, progress)
        attributes = dict(
            store_provenance_hash=store.provenance_hash, knn_k=knn.k, view=knn.view, index_factory=knn.factory,
            hard_negatives_per_anchor=hard_negatives_per_anchor, hard_positives_per_anchor=hard_positives_per_anchor,
        )  # not the report-only suspicious threshold: changing it must not change the table students train on
        counts = np.zeros(len(store), np.int64)
        negative_distribution, positive_distribution = SimilarityDistribution(histogram_bins), SimilarityDistribution(histogram_bins)
        anchors_without_negatives = 0
        bar = tqdm(total=len(store), unit="anchor", desc=f"mine {pairs_path.name}", disable=not progress)
        with written_hdf5(pairs_path, CHECKED_DATASETS) as (h5file, checksum):
            writer = _PairTableWriter(h5file, attributes, checksum)
            for start in range(0, len(store), block_size):
                stop = min(start + block_size, len(store))
                negative_partners, negative_similarities = hard_negatives(
                    knn.neighbours[start:stop], knn.similarities[start:stop], store.labels[start:stop],
                    store.labels, hard_negatives_per_anchor,
                )
                usable = ~store.skipped[start:stop]
                anchors_without_negatives += int((usable & (negative_partners[:, 0] < 0)).sum())
                block = _block_pairs(
                    start, negative_partners, negative_similarities,
                    positives[start:stop], positive_similarities[start:stop],
                )
                writer.append(block)
                counts[start:stop] = np.bincount(block["anchor"] - start, minlength=stop - start)
                negative_distribution.add(block["similarity"][block["kind"] == HARD_NEGATIVE])
                positive_distribution.add(block["similarity"][block["kind"] == HARD_POSITIVE])
                bar.update(stop - start)
            writer.finish(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        bar.close()
    with PairTable(pairs_path) as table:
        suspicious = suspicious_pairs(table, suspicious_threshold, block_size)
    return MiningSummary(
        pairs_path, len(store), len(usable_rows(store)), knn.k, anchors_without_negatives,
        negative_distribution, positive_distribution, suspicious_threshold, suspicious,
    )


def _block_pairs(
    start: int, negatives: np.ndarray, negative_similarities: np.ndarray,
    positives: np.ndarray, positive_similarities: np.ndarray,
) -> dict[str, np.ndarray]:
    """Pair rows of anchors start, start + 1, ...: per anchor its negatives then positives, each left-packed."""
    partners = np.concatenate([negatives, positives], axis=1)
    similarities = np.concatenate([negative_similarities, positive_similarities], axis=1)
    kinds = np.repeat([HARD_NEGATIVE, HARD_POSITIVE], [negatives.shape[1], positives.shape[1]])
    ranks = np.concatenate([np.arange(negatives.shape[1]), np.arange(positives.shape[1])])
    anchors = start + np.arange(len(partners))
    present = partners >= 0
    kind = np.broadcast_to(kinds, partners.shape)[present].astype(np.uint8)
    return {
        "anchor": np.broadcast_to(anchors[:, None], partners.shape)[present],
        "partner": partners[present],
        "similarity": similarities[present].astype(np.float32),
        "same_identity": (kind == HARD_POSITIVE).astype(np.uint8),
        "kind": kind,
        "rank": np.broadcast_to(ranks, partners.shape)[present].astype(np.int32),
    }


class PairTable:
    """Read access to a pair table; `offsets` is in memory, the columns are read as needed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FacekdError(f"{self.path}: pair table not found; run `facekd mine`")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise FacekdError(f"{self.path}: not a readable HDF5 file ({error})") from None
        missing = [name for name in (*PAIR_COLUMNS, "offsets") if name not in self.file]
        if missing:
            self.file.close()
            raise FacekdError(f"{self.path}: not a facekd pair table (missing datasets: {', '.join(missing)})")
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

    def rows_of_anchors(self, anchors: np.ndarray) -> np.ndarray:
        """Pair rows of some anchors, sorted."""
        anchors = np.unique(np.asarray(anchors, dtype=np.int64))
        ranges = [np.arange(self.offsets[anchor], self.offsets[anchor + 1]) for anchor in anchors]
        return np.concatenate(ranges) if ranges else np.zeros(0, np.int64)

    def blocks(self, columns: tuple[str, ...], block_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for start in range(0, len(self), block_size):
            yield start, {column: self.file[column][start : start + block_size] for column in columns}


def _once_per_unordered_pair(pairs: Pairs) -> Pairs:
    """Keep the first of (a, b) and (b, a): hard pairs are usually mined from both ends."""
    low, high = np.minimum(pairs.anchor, pairs.partner), np.maximum(pairs.anchor, pairs.partner)
    _, first = np.unique(np.stack([low, high], axis=1), axis=0, return_index=True)
    return pairs.take(np.sort(first))


def _hardness(kind: int, similarity: np.ndarray) -> np.ndarray:
    """Larger is harder: a similar negative, a dissimilar positive."""
    return similarity if kind == HARD_NEGATIVE else -similarity


def hardest_pairs(
    table: PairTable, kind: int, count: int, anchors: np.ndarray | None = None, block_size: int = 1 << 20
) -> Pairs:
    """The `count` hardest pairs of `kind`, hardest first, each unordered pair once.

    Over the whole table (streamed) or over the pairs of some anchors. Keeping the best
    2 x count rows before removing mirrored pairs is enough: each pair has at most two rows.
    """
    keep = 2 * count
    if anchors is None:
        best_rows, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for start, block in table.blocks(("kind", "similarity"), block_size):
            mask = block["kind"] == kind
            rows = np.concatenate([best_rows, start + np.flatnonzero(mask)])
            scores = np.concatenate([best_scores, _hardness(kind, block["similarity"][mask])])
            best = np.lexsort((rows, -scores))[:keep]
            best_rows, best_scores = rows[best], scores[best]
    else:
        rows = table.rows_of_anchors(anchors)
        found = table.read(rows)
        rows = rows[found.kind == kind]
        scores = _hardness(kind, found.similarity[found.kind == kind])
        best = np.lexsort((rows, -scores))[:keep]
        best_rows, best_scores = rows[best], scores[best]
    ordered = np.argsort(best_rows)
    pairs = table.read(best_rows[ordered]).take(np.argsort(ordered))
    return _once_per_unordered_pair(pairs).take(slice(0, count))


def suspicious_pairs(table: PairTable, threshold: float, block_size: int = 1 << 20) -> Pairs:
    """Hard negatives at or above `threshold` (likely duplicates or label noise), most similar first, once each."""
    found = []
    for start, block in table.blocks(("kind", "similarity"), block_size):
        found.append(start + np.flatnonzero((block["kind"] == HARD_NEGATIVE) & (block["similarity"] >= threshold)))
    rows = np.concatenate(found) if found else np.zeros(0, np.int64)
    pairs = table.read(rows)
    return _once_per_unordered_pair(pairs.take(np.lexsort((pairs.partner, pairs.anchor, -pairs.similarity))))


@dataclass(frozen=True)
class PairRecord:
    """One pair as a user reads it."""

    kind: str
    rank: int
    similarity: float
    anchor: int
    anchor_key: str
    anchor_label: int
    anchor_identity: str
    partner: int
    partner_key: str
    partner_label: int
    partner_identity: str


def describe_pairs(pairs: Pairs, store: EmbeddingStore) -> list[PairRecord]:
    """Keys, labels and identity names of some pairs, reading only their keys."""
    keys = store.keys_at(np.concatenate([pairs.anchor, pairs.partner]))
    identity_names = store.identity_names
    records = []
    for position in range(len(pairs)):
        anchor, partner = int(pairs.anchor[position]), int(pairs.partner[position])
        anchor_label, partner_label = int(store.labels[anchor]), int(store.labels[partner])
        records.append(PairRecord(
            kind=KIND_NAMES[int(pairs.kind[position])], rank=int(pairs.rank[position]),
            similarity=float(pairs.similarity[position]),
            anchor=anchor, anchor_key=keys[position], anchor_label=anchor_label,
            anchor_identity=identity_names[anchor_label],
            partner=partner, partner_key=keys[len(pairs) + position], partner_label=partner_label,
            partner_identity=identity_names[partner_label],
        ))
    return records


def write_pairs_csv(path: str | Path, records: list[PairRecord]) -> None:
    with written_atomically(path) as temporary, open(temporary, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([field.name for field in fields(PairRecord)])
        for record in records:
            writer.writerow([f"{value:.6f}" if isinstance(value, float) else value for value in vars(record).values()])


def write_histogram_csv(path: str | Path, negatives: SimilarityDistribution, positives: SimilarityDistribution) -> None:
    """Bin centres and counts of both kinds: the data of a DVC plot (x = similarity)."""
    centres = (negatives.edges[:-1] + negatives.edges[1:]) / 2
    with written_atomically(path) as temporary, open(temporary, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["similarity", "hard_negatives", "hard_positives"])
        for centre, negative_count, positive_count in zip(centres, negatives.histogram, positives.histogram):
            writer.writerow([f"{centre:.4f}", int(negative_count), int(positive_count)])


def write_summary_json(path: str | Path, summary: MiningSummary) -> None:
    write_text_atomically(path, json.dumps(summary.metrics(), indent=2, sort_keys=True) + "\n")
