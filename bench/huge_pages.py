"""`facekd index`'s build and search with and without huge pages for malloc (pipeline/huge_pages.py), same run.

    .venv/bin/python bench/huge_pages.py --store W/images1000000/data/store/teacher_embeddings.h5   # a real store
    .venv/bin/python bench/huge_pages.py --rows 200000 --dim 128 --factory HNSW32                   # generated vectors

Each measurement is a child process that builds the `--factory` index over the store (build_index,
recall calibration off: the search breadth as given) and searches every image's `--k` nearest other
images into a kNN file (search_knn), as `facekd index` does: the graph built on one thread, searched
on `--threads` (0: all cores). The child runs with GLIBC_TUNABLES=glibc.malloc.hugetlb=0 (4 KiB pages,
the baseline) or =1 (transparent huge pages for malloc's large blocks, what `facekd index` sets), the
two alternating `--repeats` times. Without `--store`, a temporary store of `--rows` face-like vectors
(bench/mining.py's generator) is written first. Prints per setting the median build and search times,
the huge pages the child held at the end (AnonHugePages), the ratios, and whether the kNN files are
byte-identical (they must be: page size changes no result).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from exact_knn import write_store  # noqa: E402
from mining import face_like_vectors  # noqa: E402

from pipeline.stage_one.config import IndexConfig  # noqa: E402
from pipeline.stage_one.index import build_index, search_knn  # noqa: E402
from pipeline.stage_one.store import EmbeddingStore  # noqa: E402

SETTINGS = {"4 KiB pages": "glibc.malloc.hugetlb=0", "huge pages": "glibc.malloc.hugetlb=1"}


def anonymous_huge_pages_mb() -> float:
    """This process's anonymous memory held in transparent huge pages, MB (0 where the kernel does not say)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(store_path: str, folder: str, factory: str, ef_search: int, k: int, threads: int) -> dict[str, float | str]:
    """Build and search once in this process (the child)."""
    config = IndexConfig(
        store=store_path, out=f"{folder}/index.faiss", knn=f"{folder}/knn.h5", factory=factory, ef_search=ef_search,
        nprobe=ef_search, recall_target=None, knn_k=k, threads=threads, device="cpu",
    )
    with EmbeddingStore(store_path) as store:
        started = time.perf_counter()
        build_index(store, config, progress=False)
        built = time.perf_counter()
        search_knn(store, config, progress=False)
        searched = time.perf_counter()
    return {
        "build_s": built - started, "search_s": searched - built, "huge_pages_mb": anonymous_huge_pages_mb(),
        "knn_sha256": hashlib.sha256(Path(config.knn).read_bytes()).hexdigest(),
    }


def run_child(arguments: list[str], tunables: str) -> dict[str, float | str]:
    environment = {**os.environ, "GLIBC_TUNABLES": tunables}
    result = subprocess.run([sys.executable, __file__, "--child", *arguments], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child ({tunables}) failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="an embedding store (default: a temporary one of --rows generated vectors)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--factory", default="HNSW32")
    parser.add_argument("--ef-search", type=int, default=32, help="HNSW efSearch (and IVF nprobe)")
    parser.add_argument("--k", type=int, default=32, help="neighbours kept per image (index.knn_k)")
    parser.add_argument("--threads", type=int, default=0, help="FAISS search threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.store, args.folder, args.factory, args.ef_search, args.k, args.threads)))
        return
    with tempfile.TemporaryDirectory() as folder:
        store_path = args.store
        if store_path is None:
            store_path = f"{folder}/store.h5"
            write_store(Path(store_path), *face_like_vectors(args.rows, args.dim, seed=0))
        with EmbeddingStore(store_path) as store:
            described = f"{len(store)} x {store.embedding_dim} ({store_path})"
        arguments = ["--store", store_path, "--folder", folder, "--factory", args.factory, "--ef-search",
                     str(args.ef_search), "--k", str(args.k), "--threads", str(args.threads)]
        runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):
            for name, tunables in SETTINGS.items():
                runs[name].append(run_child(arguments, tunables))
    print(f"{args.factory}, ef_search / nprobe {args.ef_search}, k = {args.k}, {described}; median of {args.repeats}:")
    medians = {}
    for name, measured in runs.items():
        medians[name] = {part: statistics.median(float(run[part]) for run in measured) for part in ("build_s", "search_s")}
        print(f"  {name}: build {medians[name]['build_s']:.1f} s, search {medians[name]['search_s']:.1f} s, "
              f"in huge pages at the end {max(float(run['huge_pages_mb']) for run in measured):.0f} MB")
    base, huge = medians["4 KiB pages"], medians["huge pages"]
    print(f"  huge pages: build {base['build_s'] / huge['build_s']:.2f}x, search {base['search_s'] / huge['search_s']:.2f}x, "
          f"both {(base['build_s'] + base['search_s']) / (huge['build_s'] + huge['search_s']):.2f}x faster")
    identical = len({run["knn_sha256"] for measured in runs.values() for run in measured}) == 1
    print(f"  kNN files identical: {identical}")


if __name__ == "__main__":
    main()
