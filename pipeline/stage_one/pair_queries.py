"""Pairs a user looks at: the hardest or suspicious pairs of a pair table, described and written as CSV.

The queries stream the table (or read just some anchors' pairs), so they work on a table of any
size; each unordered pair is reported once, although mining usually finds it from both ends.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline.files import opened_atomically
from pipeline.stage_one.pair_table import HARD_NEGATIVE, KIND_NAMES, Pairs, PairTable
from pipeline.stage_one.store import EmbeddingStore

SIMILARITY_GRID_BINS = 1 << 16  # the suspicious pairs are read in ranges of this grid over [-1, 1]
SIMILARITY_GRID = np.linspace(-1.0, 1.0, SIMILARITY_GRID_BINS + 1)
SUSPICIOUS_ROWS_PER_PASS = 1 << 21  # pairs read, sorted and merged at once: about 125 bytes each
DESCRIBED_ROWS = 1 << 16  # pairs described (keys read, columns built) at once when writing a CSV


def _once_per_unordered_pair(pairs: Pairs) -> Pairs:
    """Keep the first of (a, b) and (b, a): hard pairs are usually mined from both ends."""
    if not len(pairs):
        return pairs
    low, high = np.minimum(pairs.anchor, pairs.partner), np.maximum(pairs.anchor, pairs.partner)
    _, first = np.unique(low * (int(high.max()) + 1) + high, return_index=True)  # one int64 key per pair: 10x faster than rows
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
    passes = list(suspicious_pair_passes(table, threshold, max(len(table), 1), block_size))
    return passes[0] if passes else table.read(np.zeros(0, np.int64))


def suspicious_pair_passes(
    table: PairTable, threshold: float, rows_per_pass: int = SUSPICIOUS_ROWS_PER_PASS, block_size: int = 1 << 20
) -> Iterator[Pairs]:
    """`suspicious_pairs` in consecutive parts of about `rows_per_pass` pairs, so memory stays bounded.

    One pass reads the pairs whose similarity falls in one range of a fine grid (more than
    `rows_per_pass` only when one grid bin holds more). A pair whose mirror (b, a) lies in a
    higher range was reported there and is dropped; one in the same range is merged as before.
    """
    counts = np.zeros(SIMILARITY_GRID_BINS, np.int64)
    for _, bins in _suspicious_rows(table, threshold, 0, SIMILARITY_GRID_BINS, block_size):
        counts += np.bincount(bins, minlength=SIMILARITY_GRID_BINS)
    for low, high in _pass_bounds(counts, rows_per_pass):
        found = Pairs.concatenate([
            table.read_span(rows) for rows, _ in _suspicious_rows(table, threshold, low, high, block_size) if len(rows)
        ])
        found = _once_per_unordered_pair(found.take(np.lexsort((found.partner, found.anchor, -found.similarity))))
        if high < SIMILARITY_GRID_BINS:
            found = found.take(~_mirrored_above(table, found, threshold, high, block_size))
        yield found


def _similarity_bins(similarity: np.ndarray) -> np.ndarray:
    """Position on a fine grid over [-1, 1], non-decreasing in similarity (outliers clipped to the ends)."""
    bins = np.searchsorted(SIMILARITY_GRID, similarity, side="right") - 1
    return np.clip(bins, 0, SIMILARITY_GRID_BINS - 1)


def _suspicious_rows(
    table: PairTable, threshold: float, low: int, high: int, block_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per block of the table: rows of the suspicious pairs with grid bin in [low, high), and their bins."""
    for start, block in table.blocks(("kind", "similarity"), block_size):
        candidates = np.flatnonzero((block["kind"] == HARD_NEGATIVE) & (block["similarity"] >= threshold))
        bins = _similarity_bins(block["similarity"][candidates])
        in_range = (bins >= low) & (bins < high)
        yield start + candidates[in_range], bins[in_range]


def _pass_bounds(counts: np.ndarray, rows_per_pass: int) -> list[tuple[int, int]]:
    """Grid ranges [low, high), highest first, each of at most `rows_per_pass` pairs unless one bin holds more."""
    bounds, high, taken = [], len(counts), 0
    for grid_bin in np.flatnonzero(counts)[::-1]:
        if taken and taken + counts[grid_bin] > rows_per_pass:
            bounds.append((int(grid_bin) + 1, high))
            high, taken = int(grid_bin) + 1, 0
        taken += int(counts[grid_bin])
    if taken:
        bounds.append((0, high))
    return bounds


def _mirrored_above(table: PairTable, found: Pairs, threshold: float, low: int, block_size: int) -> np.ndarray:
    """Which of `found` (not empty) have their mirror among the suspicious pairs of grid bins >= `low`."""
    num_images = len(table.offsets) - 1
    mirror_keys = np.sort(found.partner * num_images + found.anchor)
    mirrored_keys = []
    for rows, _ in _suspicious_rows(table, threshold, low, SIMILARITY_GRID_BINS, block_size):
        if not len(rows):
            continue
        higher = table.read_span(rows)
        keys = higher.anchor * num_images + higher.partner
        positions = np.minimum(np.searchsorted(mirror_keys, keys), len(mirror_keys) - 1)
        mirrored_keys.append(keys[mirror_keys[positions] == keys])
    return np.isin(found.partner * num_images + found.anchor, np.concatenate(mirrored_keys))


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


PAIR_RECORD_FIELDS = tuple(field.name for field in fields(PairRecord))  # also the CSV's columns


def pair_columns(pairs: Pairs, store: EmbeddingStore, identity_names: list[str]) -> list[list]:
    """`PairRecord`'s fields of some pairs, one list per field: a few conversions per column instead of
    Python work per pair (a suspicious-pairs CSV can hold millions). Reads only the pairs' keys."""
    keys = store.keys_at(np.concatenate([pairs.anchor, pairs.partner]))
    anchor_labels, partner_labels = store.labels[pairs.anchor].tolist(), store.labels[pairs.partner].tolist()
    return [
        [KIND_NAMES[kind] for kind in pairs.kind.tolist()],
        pairs.rank.tolist(),
        pairs.similarity.astype(np.float64).tolist(),
        pairs.anchor.tolist(), keys[: len(pairs)], anchor_labels, [identity_names[label] for label in anchor_labels],
        pairs.partner.tolist(), keys[len(pairs) :], partner_labels, [identity_names[label] for label in partner_labels],
    ]


def describe_pairs(pairs: Pairs, store: EmbeddingStore) -> list[PairRecord]:
    """Keys, labels and identity names of some pairs, reading only their keys."""
    return [PairRecord(*values) for values in zip(*pair_columns(pairs, store, store.identity_names))]


def write_pairs_csv(path: str | Path, parts: Iterable[Pairs], store: EmbeddingStore) -> int:
    """The pairs of `parts`, in order, as CSV with `PairRecord`'s fields as columns (published atomically),
    described `DESCRIBED_ROWS` at a time; returns the number of rows."""
    identity_names, similarity_column, count = store.identity_names, PAIR_RECORD_FIELDS.index("similarity"), 0
    with opened_atomically(path, newline="") as out:
        writer = csv.writer(out)
        writer.writerow(PAIR_RECORD_FIELDS)
        for part in parts:
            for start in range(0, len(part), DESCRIBED_ROWS):
                columns = pair_columns(part.take(slice(start, start + DESCRIBED_ROWS)), store, identity_names)
                columns[similarity_column] = [f"{similarity:.6f}" for similarity in columns[similarity_column]]
                writer.writerows(zip(*columns))
                count += len(columns[0])
    return count


def write_suspicious_csv(
    path: str | Path, table: PairTable, store: EmbeddingStore, threshold: float,
    rows_per_pass: int = SUSPICIOUS_ROWS_PER_PASS, block_size: int = 1 << 20,
) -> int:
    """Every suspicious pair of `table` as CSV (`suspicious_pairs`' rows and order), streamed pass by pass;
    returns the number of pairs."""
    return write_pairs_csv(path, suspicious_pair_passes(table, threshold, rows_per_pass, block_size), store)
