"""IVF indexes searched with the nprobe that reaches index.recall_target, against exact Flat, same run.

    .venv/bin/python bench/recall_target.py [--rows 100000] [--dim 512] [--factory IVF1024,Flat] [--factory IVF4096,Flat]

Writes a temporary float16 store of `--rows` face-like unit vectors (bench/mining.py's generator:
identities of 20 images in groups of 20 lookalikes), then for each `--factory` runs what `facekd index`
runs: build the index, choose nprobe by doubling `--nprobe` until recall@32 on index.recall_queries
sampled images reaches `--target` against exact search streamed from the store
(pipeline/stage_one/recall_target.py), and search every image's 32 nearest other images into a kNN
file. The baseline is exact search with a Flat index in RAM (what `facekd index` builds by default),
timed on `--queries` other sampled images and extrapolated linearly to all images (all-vs-all Flat is
out of reach on a small machine); its result on those images is the ground truth of the recall
printed for the full search, and of a sweep of nprobe on the same images. Times are wall and CPU
seconds (this process, all threads); the ratios use CPU seconds, which other jobs on a shared
machine distort less.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from exact_knn import write_store  # noqa: E402
from mining import K, face_like_vectors  # noqa: E402

from pipeline.stage_one.config import IndexConfig  # noqa: E402
from pipeline.stage_one.index import (  # noqa: E402
    SearchBreadth, build_index, configure_faiss, drop_self, load_index, recall_at_k, search_knn,
)
from pipeline.stage_one.knn_file import KnnFile  # noqa: E402
from pipeline.stage_one.recall_target import doublings, tuned_search_breadth  # noqa: E402
from pipeline.stage_one.store import EmbeddingStore  # noqa: E402


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """function's result, wall seconds and CPU seconds (this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", action="append", help="faiss.index_factory string (repeatable); default IVF1024,Flat and IVF4096,Flat")
    parser.add_argument("--nprobe", type=int, default=IndexConfig().nprobe, help="index.nprobe, where the doubling starts")
    parser.add_argument("--target", type=float, default=IndexConfig().recall_target, help="index.recall_target")
    parser.add_argument("--train-sample", type=int, default=IndexConfig().train_sample, help="index.train_sample")
    parser.add_argument("--queries", type=int, default=2000, help="images on which Flat is timed and the full search's recall measured")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    args = parser.parse_args()
    configure_faiss(args.threads)
    vectors, labels = face_like_vectors(args.rows, args.dim, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "store.h5"
        write_store(store_path, vectors, labels)
        with EmbeddingStore(store_path) as store:
            vectors = store.embeddings[:, 0].astype(np.float32)  # what the index holds: the float16 store's image view
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            query_rows = np.sort(np.random.default_rng(12345).choice(args.rows, args.queries, replace=False))
            flat = faiss.IndexFlatIP(args.dim)
            flat.add(vectors)
            (similarities, found), flat_s, flat_cpu_s = timed(lambda: flat.search(vectors[query_rows], K + 1))
            flat_s, flat_cpu_s = flat_s * args.rows / args.queries, flat_cpu_s * args.rows / args.queries
            exact, _ = drop_self(found, similarities, query_rows, K)
            del flat
            print(f"{args.rows} x {args.dim} float16 store, k = {K}, recall_target {args.target}, nprobe from {args.nprobe}; "
                  f"Flat (exact) all-vs-all {flat_s:.0f} s, CPU {flat_cpu_s:.0f} s (extrapolated from {args.queries} queries)",
                  flush=True)
            for factory in args.factory or ["IVF1024,Flat", "IVF4096,Flat"]:
                config = IndexConfig(
                    store=str(store_path), out=f"{folder}/index.faiss", knn=f"{folder}/knn.h5", factory=factory,
                    nprobe=args.nprobe, recall_target=args.target, train_sample=args.train_sample, device="cpu",
                    threads=args.threads,
                )
                tuning: list[tuple[Any, float, float]] = []

                def timed_tuning(index: faiss.Index) -> SearchBreadth:
                    tuning.append(timed(lambda: tuned_search_breadth(index, store, config)))
                    return tuning[0][0]

                metadata, build_s, build_cpu_s = timed(
                    lambda: build_index(store, config, progress=False, choose_search_breadth=timed_tuning)
                )
                _, tuning_s, tuning_cpu_s = tuning[0]
                build_s, build_cpu_s = build_s - tuning_s, build_cpu_s - tuning_cpu_s
                _, search_s, search_cpu_s = timed(lambda: search_knn(store, config, progress=False))
                with KnnFile(config.knn, store) as knn:
                    full_recall = recall_at_k(knn.neighbours[query_rows], exact, K)
                print(f"{factory}: nprobe {args.nprobe} -> {metadata.nprobe} (recall@{K} {metadata.recall:.3f} on "
                      f"{metadata.recall_queries} sampled images; {tuning_s:.1f} s, CPU {tuning_cpu_s:.1f} s); the full "
                      f"search's recall@{K} on {args.queries} other images {full_recall:.3f}; build {build_s:.1f} s, CPU "
                      f"{build_cpu_s:.1f} s; search {search_s:.1f} s, CPU {search_cpu_s:.1f} s: {flat_cpu_s / search_cpu_s:.1f}x "
                      f"less CPU than Flat, {flat_cpu_s / (build_cpu_s + tuning_cpu_s + search_cpu_s):.1f}x with build and "
                      "calibration", flush=True)
                index, _ = load_index(config.out, store)
                sweep = []
                for nprobe in doublings(1, min(2 * metadata.nprobe, faiss.extract_index_ivf(index).nlist)):
                    index.nprobe = nprobe
                    similarities, found = index.search(vectors[query_rows], K + 1)
                    sweep.append(f"{nprobe} {recall_at_k(drop_self(found, similarities, query_rows, K)[0], exact, K):.3f}")
                print(f"  recall@{K} on those {args.queries} images by nprobe: {', '.join(sweep)}", flush=True)


if __name__ == "__main__":
    main()
