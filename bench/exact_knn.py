"""Exact kNN streamed from the store (pipeline/stage_one/exact_knn.py) vs FAISS Flat in memory, same run.

    .venv/bin/python bench/exact_knn.py [--rows 200000] [--dim 128] [--queries 2000] [--repeats 3]

Writes a temporary store of `--rows` face-like vectors (bench/mining.py's generator; float16,
image + flip views, as `facekd embed` writes them), then searches a random sample of `--queries`
stored vectors for their k + 1 = 33 nearest neighbours: with a Flat index holding the whole
database in RAM (as `facekd index` does below `index.memory_gb`; its build time is reported
apart), and streamed from the store block by block (65536 rows, read and normalised at every
pass) on each CPU backend. Methods take turns `--repeats` times; medians are printed, with the
share of queries whose neighbour ids equal Flat's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from mining import face_like_vectors  # noqa: E402

from pipeline.stage_one.exact_knn import block_search, search_streamed  # noqa: E402
from pipeline.stage_one.index import configure_faiss  # noqa: E402
from pipeline.stage_one.store import EmbeddingStore, StoreWriter  # noqa: E402
from pipeline.stage_one.store_views import read_unit_vectors, unit_vectors  # noqa: E402

K_SEARCHED = 33
BLOCK_SIZE = 65536


def write_store(path: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
    """A store whose image and flip views are both `vectors` (float16, as embed writes them)."""
    provenance = {"teacher_sha256": "b" * 64, "dataset_kind": "image_folder", "dataset_fingerprint": "f" * 64}
    names = [f"id{label}" for label in range(int(labels.max()) + 1)]
    keys = [f"id{label}/{row}.jpg" for row, label in enumerate(labels)]
    writer = StoreWriter(path, provenance, labels, keys, names, vectors.shape[1], BLOCK_SIZE, "float16")
    for block in writer.pending_blocks:
        start, stop = writer.layout.bounds(block)
        views = np.repeat(vectors[start:stop, None], 2, axis=1)
        writer.write_block(block, views.astype(np.float16), np.linalg.norm(views, axis=2), np.zeros(stop - start, np.uint8))
    writer.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_faiss(0)
    vectors, labels = face_like_vectors(args.rows, args.dim, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "store.h5"
        write_store(store_path, vectors, labels)
        with EmbeddingStore(store_path) as store:
            query_rows = np.sort(np.random.default_rng(1).choice(args.rows, args.queries, replace=False))
            queries = read_unit_vectors(store, query_rows, "image")
            started = time.perf_counter()
            flat = faiss.IndexFlatIP(args.dim)
            flat.add(unit_vectors(store.read_embeddings(), "image"))
            build = time.perf_counter() - started
            methods = {
                "FAISS Flat in RAM": lambda: flat.search(queries, K_SEARCHED)[1],
                "streamed, faiss-cpu": lambda: search_streamed(
                    store, "image", queries, K_SEARCHED, block_search("faiss-cpu"), BLOCK_SIZE)[0],
                "streamed, torch-cpu": lambda: search_streamed(
                    store, "image", queries, K_SEARCHED, block_search("torch-cpu"), BLOCK_SIZE)[0],
            }
            times: dict[str, list[float]] = {name: [] for name in methods}
            found: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for name, method in methods.items():
                    started = time.perf_counter()
                    found[name] = method()
                    times[name].append(time.perf_counter() - started)
    reference = statistics.median(times["FAISS Flat in RAM"])
    print(f"{args.queries} queries, k + 1 = {K_SEARCHED}, store of {args.rows} x {args.dim}; "
          f"Flat build (reading the store + adding) {build:.2f} s; medians of {args.repeats} interleaved runs:")
    for name, samples in times.items():
        same = np.mean(np.all(found[name] == found["FAISS Flat in RAM"], axis=1))
        seconds = statistics.median(samples)
        print(f"  {name}: {seconds:.2f} s ({seconds / reference:.2f}x Flat's time), ids equal to Flat's for {same:.4f} of queries")


if __name__ == "__main__":
    main()
