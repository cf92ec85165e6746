"""The search breadth of an approximate index (IVF nprobe, HNSW efSearch), chosen for a recall target.

A fixed nprobe can miss many true neighbours: a user's IVF1024,Flat over 300k faces, searched with
nprobe 8, found 0.74 of each image's exact 32 nearest. So after an index is built, recall@knn_k is
measured on `recall_queries` sampled images against their exact neighbours (the whole store streamed
block by block, as pipeline/stage_one/exact_knn.py searches it; each query's own row left out, as in
the main search), starting from the configured nprobe / ef_search and doubling it until the recall
reaches `recall_target`: for IVF up to nlist (every list: exact for IVF*,Flat), for HNSW up to
EF_SEARCH_LIMIT. A target that compression (PQ, SQ) puts out of reach is not an error: the largest
value tried is used, with a warning that names the recall measured.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import faiss
import numpy as np
import torch

from pipeline.stage_one.config import IndexConfig
from pipeline.stage_one.exact_knn import block_search, choose_backend, search_streamed
from pipeline.stage_one.index import (
    SearchBreadth, drop_self, faiss_has_gpu, found_store_rows, recall_at_k, set_search_parameters,
)
from pipeline.stage_one.store import EmbeddingStore
from pipeline.stage_one.store_views import read_unit_vectors, usable_rows

log = logging.getLogger(__name__)

EF_SEARCH_LIMIT = 4096  # HNSW efSearch tried at most: search time grows with it; a graph that needs more is the wrong index


def tuned_search_breadth(index: faiss.Index, store: EmbeddingStore, config: IndexConfig) -> SearchBreadth:
    """Set on `index` (built over `store`) the smallest doubling of `config.nprobe` / `config.ef_search` whose
    recall@knn_k reaches `config.recall_target` (or the largest tried), and return it with the recall measured.

    An index without such a knob (Flat, PQ, ...), or `recall_target` None: searched as configured, not measured.
    """
    configured = set_search_parameters(index, config.nprobe, config.ef_search)
    if config.recall_target is None or configured == SearchBreadth():
        return configured
    k, target = config.knn_k, config.recall_target
    rows_of_index = usable_rows(store)
    sample = np.random.default_rng(config.seed).choice(len(rows_of_index), min(config.recall_queries, len(rows_of_index)),
                                                       replace=False)
    query_rows = rows_of_index[np.sort(sample)]
    queries = read_unit_vectors(store, query_rows, config.view)
    exact = exact_neighbours(store, config, queries, query_rows)
    for breadth in breadths_to_try(index, configured):
        set_search_parameters(index, breadth.nprobe, breadth.ef_search)
        found, _ = found_store_rows(index.search(queries, k + 1), rows_of_index, query_rows, k)
        recall = recall_at_k(found, exact, k)
        if recall >= target:
            break
    chosen = replace(breadth, recall=recall, recall_queries=len(query_rows))
    log.log(logging.INFO if recall >= target else logging.WARNING, "%s", recall_report(chosen, k, target))
    return chosen


def exact_neighbours(
    store: EmbeddingStore, config: IndexConfig, queries: np.ndarray, query_rows: np.ndarray
) -> np.ndarray:
    """The store rows of the `config.knn_k` nearest other images of each query, by exact search over the store."""
    backend, _ = choose_backend(config.device, faiss_has_gpu(), torch.cuda.is_available(), config.knn_k + 1)
    found, similarities = search_streamed(
        store, config.view, queries, config.knn_k + 1, block_search(backend), config.rows_per_search
    )
    return drop_self(found, similarities, query_rows, config.knn_k)[0]


def breadths_to_try(index: faiss.Index, configured: SearchBreadth) -> list[SearchBreadth]:
    """The configured breadth, then nprobe (IVF; an HNSW quantizer's efSearch kept) or efSearch (HNSW)
    doubled up to its limit."""
    if configured.nprobe is not None:
        nlist = faiss.extract_index_ivf(index).nlist
        return [replace(configured, nprobe=value) for value in doublings(min(configured.nprobe, nlist), nlist)]
    limit = max(configured.ef_search, EF_SEARCH_LIMIT)
    return [replace(configured, ef_search=value) for value in doublings(configured.ef_search, limit)]


def doublings(start: int, limit: int) -> list[int]:
    """start, 2 start, 4 start, ... and finally `limit` itself (start <= limit)."""
    values = [start]
    while values[-1] < limit:
        values.append(min(2 * values[-1], limit))
    return values


def recall_report(breadth: SearchBreadth, k: int, target: float | None) -> str:
    """One line: the breadth searched with, and the recall measured against the target."""
    knobs = ", ".join(f"{name} {value}" for name, value in (("nprobe", breadth.nprobe), ("ef_search", breadth.ef_search))
                      if value is not None)
    if breadth.recall is None or target is None:
        return f"searched with {knobs} as set (index.recall_target null: recall not measured)"
    measured = f"recall@{k} {breadth.recall:.3f} against exact search on {breadth.recall_queries} sampled images"
    if breadth.recall >= target:
        return f"searched with {knobs}: {measured} (index.recall_target {target})"
    why = ("every list is searched: the index's compression (PQ, SQ) limits its recall" if breadth.nprobe is not None
           else "a larger HNSW M connects the graph better")
    return f"searched with {knobs}, the most tried: {measured}, below index.recall_target {target} ({why})"
