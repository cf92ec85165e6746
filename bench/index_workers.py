"""`facekd index`'s search (search_knn) in this process vs on 2 local dask worker processes, same run.

    .venv/bin/python bench/index_workers.py [--rows 200000] [--dim 128] [--factory Flat] [--factory IVF1024,Flat]
    .venv/bin/python bench/index_workers.py --factory streamed --rows-per-search 16384   # 4 query passes at 200k

Writes a temporary store of `--rows` face-like vectors (bench/mining.py's generator, as in
bench/exact_knn.py), builds each `--factory` index once, then searches every image's 32 nearest
other images into a kNN file: in this process (index.workers 0) and on a local cluster of 2 worker
processes (index.workers 2), the cluster's start and each worker's index load included. `--factory streamed`
times the exact search streamed from the store (search_exact_streamed, faiss-cpu; passes of up to 4 x
`--rows-per-search` queries, one per task on the workers). FAISS uses
`--threads` threads in this process and in each worker (0: all cores), as `facekd index` does. Prints both times, their ratio and
whether the two kNN files are byte-identical.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from exact_knn import write_store  # noqa: E402
from mining import face_like_vectors  # noqa: E402

from pipeline.stage_one.config import IndexConfig  # noqa: E402
from pipeline.stage_one.exact_knn import search_exact_streamed  # noqa: E402
from pipeline.stage_one.index import build_index, search_knn  # noqa: E402
from pipeline.stage_one.store import EmbeddingStore  # noqa: E402


def timed_search(store: EmbeddingStore, config: IndexConfig) -> tuple[float, bytes]:
    started = time.perf_counter()
    if config.factory == "streamed":
        search_exact_streamed(store, config, backend="faiss-cpu", progress=False)
    else:
        search_knn(store, config, progress=False)
    return time.perf_counter() - started, Path(config.knn).read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--factory", action="append", help="faiss.index_factory string (repeatable); default Flat and IVF1024,Flat")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads of this process and of each worker")
    parser.add_argument("--rows-per-search", type=int, default=65536, help="index.rows_per_search (query block)")
    args = parser.parse_args()
    vectors, labels = face_like_vectors(args.rows, args.dim, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "store.h5"
        write_store(store_path, vectors, labels)
        with EmbeddingStore(store_path) as store:
            for factory in args.factory or ["Flat", "IVF1024,Flat"]:
                here = IndexConfig(
                    store=str(store_path), out=f"{folder}/index.faiss", knn=f"{folder}/knn.h5", factory=factory,
                    nprobe=4, device="cpu", threads=args.threads, rows_per_search=args.rows_per_search,
                )
                if factory != "streamed":
                    build_index(store, here, progress=False)
                in_process, expected = timed_search(store, here)
                on_workers, written = timed_search(store, here.model_copy(update={"workers": args.workers}))
                print(f"{factory}, {args.rows} x {args.dim}, k = 32, threads {args.threads}: in this process {in_process:.1f} s, "
                      f"{args.workers} workers {on_workers:.1f} s ({in_process / on_workers:.2f}x), "
                      f"kNN files identical: {written == expected}", flush=True)


if __name__ == "__main__":
    main()
