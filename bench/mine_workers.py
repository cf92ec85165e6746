"""`facekd mine` (mine_and_report) in this process vs with its hard positives on 2 local dask worker processes, same run.

    .venv/bin/python bench/mine_workers.py [--rows 300000] [--dim 128] [--workers 2] [--factory IVF1024,Flat]
                                           [--rows-per-block 65536] [--repeats 3]

Writes a temporary store of `--rows` face-like vectors (bench/mining.py's generator: identities of ~20
images, as in bench/exact_knn.py) and its kNN file (k = 32, `--factory` searched with nprobe 1: the
neighbours' quality hardly changes mining's cost; not timed), then mines it three ways, taking turns
`--repeats` times: in this process (mine.workers 0); with `--workers` local worker processes (mine.workers
N: the cluster's start included); and on an already running local cluster of as many workers (--scheduler:
what a long-lived cluster costs per run). Prints the median time of each, the ratios to the first and
whether every output (pair table, summary, histogram, suspicious pairs) was byte-identical to the first
run's every time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from exact_knn import write_store  # noqa: E402
from mining import face_like_vectors  # noqa: E402

from pipeline.stage_one.config import IndexConfig, MineConfig  # noqa: E402
from pipeline.stage_one.index import build_index, search_knn  # noqa: E402
from pipeline.stage_one.miners import mine_and_report  # noqa: E402
from pipeline.stage_one.store import EmbeddingStore  # noqa: E402

OUTPUTS = ("out", "summary", "histogram", "suspicious")


def timed_mining(config: MineConfig, scheduler: str | None = None) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    mine_and_report(config, progress=False, scheduler=scheduler)
    return time.perf_counter() - started, [Path(getattr(config, output)).read_bytes() for output in OUTPUTS]


def main() -> None:
    from distributed import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--factory", default="IVF1024,Flat", help="faiss.index_factory string of the kNN search")
    parser.add_argument("--rows-per-block", type=int, default=65536, help="mine.rows_per_block: images per hard-positive batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vectors, labels = face_like_vectors(args.rows, args.dim, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "store.h5"
        write_store(store_path, vectors, labels)
        del vectors
        index = IndexConfig(store=str(store_path), out=f"{folder}/index.faiss", knn=f"{folder}/knn.h5",
                            factory=args.factory, nprobe=1, device="cpu")
        with EmbeddingStore(store_path) as store:
            build_index(store, index, progress=False)
            search_knn(store, index, progress=False)
        here = MineConfig(store=str(store_path), knn=index.knn, out=f"{folder}/pairs.h5", summary=f"{folder}/summary.json",
                          histogram=f"{folder}/histogram.csv", suspicious=f"{folder}/suspicious.csv",
                          rows_per_block=args.rows_per_block)
        on_workers = here.model_copy(update={"workers": args.workers})
        seconds: dict[str, list[float]] = {"here": [], "workers": [], "cluster": []}
        expected, identical = None, True
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            for _ in range(args.repeats):
                for way, config, scheduler in (("here", here, None), ("workers", on_workers, None),
                                               ("cluster", here, cluster.scheduler_address)):
                    elapsed, written = timed_mining(config, scheduler)
                    seconds[way].append(elapsed)
                    expected = expected or written
                    identical = identical and written == expected
        in_process, workers, running = (statistics.median(seconds[way]) for way in ("here", "workers", "cluster"))
        print(f"{args.rows} x {args.dim}, rows_per_block {here.rows_per_block}, median of {args.repeats}: "
              f"in this process {in_process:.1f} s, {args.workers} workers {workers:.1f} s ({in_process / workers:.2f}x, "
              f"cluster start included), {args.workers} workers of a running cluster {running:.1f} s "
              f"({in_process / running:.2f}x), outputs identical: {identical}", flush=True)


if __name__ == "__main__":
    main()
