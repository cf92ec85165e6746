"""Pairs a user looks at: the hardest or suspicious pairs of a pair table, described and written as CSV.

The queries stream the table (or read just some anchors' pairs), so they work on a table of any
size; each unordered pair is reported once, although mining usually finds it from both ends.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.files import opened_atomically
from pipeline.stage_one.pair_table import HARD_NEGATIVE, KIND_NAMES, Pairs, PairTable
from pipeline.stage_one.store import EmbeddingStore


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
    """One row per record, its fields as columns (published atomically)."""
    with opened_atomically(path, newline="") as out:
        writer = csv.writer(out)
        writer.writerow([field.name for field in fields(PairRecord)])
        for record in records:
            writer.writerow([f"{value:.6f}" if isinstance(value, float) else value for value in vars(record).values()])
