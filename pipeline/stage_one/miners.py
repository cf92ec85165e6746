"""Hard-pair mining from the teacher's kNN result, written as the pair table (pipeline/stage_one/pair_table.py).

Hard negatives of an anchor: its kNN neighbours of another identity, highest teacher similarity
first. Hard positives: the images of its own identity with the lowest teacher similarity, exact
(each identity's similarity matrix, computed in row blocks so a huge identity stays bounded).
Hard positives are most of mining's work; with `mine.workers` or a scheduler, dask workers mine
them batch by batch, each reading its batch from the store, and this process writes everything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.dask_cluster import close_quietly, dask_client, map_in_order
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer
from pipeline.hdf5 import written_hdf5
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.config import MineConfig
from pipeline.stage_one.mining_report import MiningSummary, SimilarityDistribution, write_histogram_csv, write_summary_json
from pipeline.stage_one.pair_queries import write_suspicious_csv
from pipeline.stage_one.pair_table import CHECKED_DATASETS, HARD_NEGATIVE, HARD_POSITIVE, PairTable, PairTableWriter
from pipeline.stage_one.store import EmbeddingStore, check_finite_rows
from pipeline.stage_one.store_views import read_unit_vectors, usable_rows
from pipeline.stage_one.worker_store import StoreFile, store_on_worker

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
    store: EmbeddingStore, view: str, count: int, batch_rows: int, progress: bool, client: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every usable row's `count` least similar images of its own identity (N x count, -1 / NaN padded).

    Identities are mined in batches of about `batch_rows` images, here or (given a dask `client`) on
    the workers, in order; memory is bounded by a few batches plus one block of the largest identity's
    similarity matrix. Workers compute the same bits: NumPy's BLAS sums each similarity in the same
    order whatever its number of threads (checked up to 3000 x 3000 x 512 with 1 and 2 threads).
    """
    partners = np.full((len(store), count), -1, np.int64)
    similarities = np.full((len(store), count), np.nan, np.float32)
    identities = identities_of(store)
    batches = identity_batches(identities, batch_rows)
    if client is None:
        mined = (batch_positives(store, identities[first:last], view, count) for first, last in batches)
    else:
        arguments = [(StoreFile.of(store), first, last, view, count) for first, last in batches]
        mined = map_in_order(client, positives_on_worker, arguments, "hard-positives")
    bar = tqdm(total=sum(map(len, identities)), unit="img", desc="hard positives", disable=not progress)
    for rows, batch_partners, batch_similarities in mined:
        partners[rows] = batch_partners
        similarities[rows] = batch_similarities
        bar.update(len(rows))
    bar.close()
    return partners, similarities


def identities_of(store: EmbeddingStore) -> list[np.ndarray]:
    """The usable store rows of each identity (ascending), identities by label."""
    rows = usable_rows(store)
    by_label = np.argsort(store.labels[rows], kind="stable")
    return np.split(rows[by_label], np.flatnonzero(np.diff(store.labels[rows][by_label])) + 1)


def identity_batches(identities: list[np.ndarray], batch_rows: int) -> list[tuple[int, int]]:
    """Consecutive ranges [first, last) of `identities`, each closed once it holds `batch_rows` images or more."""
    batches, first, size = [], 0, 0
    for position, identity_rows in enumerate(identities):
        size += len(identity_rows)
        if size >= batch_rows:
            batches.append((first, position + 1))
            first, size = position + 1, 0
    if first < len(identities):
        batches.append((first, len(identities)))
    return batches


def batch_positives(
    store: EmbeddingStore, identities: list[np.ndarray], view: str, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of some identities (ascending) and, per row, its `count` least similar images of its own
    identity (-1 / NaN padded); reads the identities' vectors once."""
    rows = np.sort(np.concatenate(identities))
    vectors = read_unit_vectors(store, rows, view)
    partners = np.full((len(rows), count), -1, np.int64)
    similarities = np.full((len(rows), count), np.nan, np.float32)
    for identity_rows in identities:
        in_batch = np.searchsorted(rows, identity_rows)
        positions, identity_similarities = lowest_similarities(vectors[in_batch], count)
        taken = positions.shape[1]
        partners[in_batch, :taken] = identity_rows[positions]
        similarities[in_batch, :taken] = identity_similarities
    return rows, partners, similarities


_worker_identities: dict[StoreFile, list[np.ndarray]] = {}  # the rows of each identity of the store a worker holds


def positives_on_worker(
    source: StoreFile, first: int, last: int, view: str, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`batch_positives` of identities [first, last) on a dask worker, which opens the store (and groups its
    rows by identity) on its first batch and keeps both for the next ones."""
    store = store_on_worker(source)
    if source not in _worker_identities:
        _worker_identities.clear()
        _worker_identities[source] = identities_of(store)
    return batch_positives(store, _worker_identities[source][first:last], view, count)


def mine_and_report(config: MineConfig, *, progress: bool, scheduler: str | None = None) -> MiningSummary:
    """`facekd mine`: the pair table of `config.store` and `config.knn`, and its reports (summary,
    histogram, suspicious pairs) at the paths `config` names."""
    with EmbeddingStore(config.store) as store:
        summary = mine_pairs(store, config, progress=progress, scheduler=scheduler)
    write_summary_json(config.summary, summary)
    write_histogram_csv(config.histogram, summary.negatives, summary.positives)
    return summary


def mine_pairs(
    store: EmbeddingStore, config: MineConfig, *, progress: bool, scheduler: str | None = None
) -> MiningSummary:
    """Mine hard negatives (from the kNN file `config.knn`) and hard positives (exact) into the pair table at
    `config.out`; write its suspicious pairs to `config.suspicious`, streamed (there can be millions).

    The hard positives are mined on `config.workers` local dask worker processes or on the cluster at
    `scheduler` when either is given; every output is byte-identical to the one mined in this process.
    """
    pairs_path, block_size = Path(config.out), config.rows_per_block
    hard_negatives_per_anchor, hard_positives_per_anchor = config.hard_negatives_per_anchor, config.hard_positives_per_anchor
    suspicious_threshold = config.suspicious_threshold
    check_finite_rows(store, block_size)
    with exclusive_writer(pairs_path), KnnFile(config.knn, store) as knn:
        if not 1 <= hard_negatives_per_anchor <= knn.k:
            raise FacekdError(
                f"hard_negatives_per_anchor is {hard_negatives_per_anchor}; expected 1 .. {knn.k}, the number of "
                f"neighbours per image in {knn.path} (search more with index.knn_k)"
            )
        knn.verify()
        client = dask_client(config.workers, 1, scheduler) if config.workers > 0 or scheduler else None
        try:
            positives, positive_similarities = hard_positives(
                store, knn.view, hard_positives_per_anchor, block_size, progress, client
            )
        finally:
            if client is not None:
                close_quietly(client)
        attributes = dict(
            store_provenance_hash=store.provenance_hash, knn_k=knn.k, view=knn.view, index_factory=knn.factory,
            hard_negatives_per_anchor=hard_negatives_per_anchor, hard_positives_per_anchor=hard_positives_per_anchor,
        )  # not the report-only suspicious threshold: changing it must not change the table students train on
        counts = np.zeros(len(store), np.int64)
        negative_distribution, positive_distribution = SimilarityDistribution(config.histogram_bins), SimilarityDistribution(config.histogram_bins)
        anchors_without_negatives = 0
        bar = tqdm(total=len(store), unit="anchor", desc=f"mine {pairs_path.name}", disable=not progress)
        with written_hdf5(pairs_path, CHECKED_DATASETS) as (h5file, checksum):
            writer = PairTableWriter(h5file, attributes, checksum)
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
        suspicious_count = write_suspicious_csv(config.suspicious, table, store, suspicious_threshold, block_size=block_size)
    return MiningSummary(
        pairs_path, len(store), len(usable_rows(store)), knn.k, anchors_without_negatives,
        negative_distribution, positive_distribution, suspicious_threshold, suspicious_count,
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
