"""All-vs-all kNN search (k = 32) for offline mining: exact FAISS, IVF, and a torch baseline, same run.

    .venv/bin/python bench/mining.py [--sizes 100000x128,1000000x128,1000000x512] [--queries 2000]
                                     [--threads 2] [--json bench_mining.json]

Data: synthetic face-like unit vectors with two levels of structure: identities of ~20 images
(WebFace42M has 21 per identity) whose images are the identity's centre plus noise
(same-identity cosine ~0.6), and groups of 20 identities ("lookalikes": same group ~0.3,
other groups ~0 +- 1/sqrt(D)), so an image's k = 32 neighbours hold its own identity and
other identities of its group, the hard negatives. Uniform random vectors would be the worst
case for IVF and unlike faces.

All-vs-all over N vectors is N queries against N vectors. On a small machine that is out of
reach at 1M, so each method searches a random sample of `--queries` database vectors against
the whole database (k + 1 neighbours, self dropped, as `facekd index` does) and its time is
extrapolated linearly to N queries: search cost is linear in the number of queries. Index build
time (adding, and training for IVF) is measured in full and reported apart. Recall@10 is the
fraction of each query's exact 10 nearest neighbours found among its approximate 10; hard-negative
recall is the fraction of the exact first 8 other-identity neighbours (what `facekd mine` keeps)
that the approximate search also yields. "vs exact" is relative to FAISS Flat as `facekd index` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import faiss
import numpy as np
import torch

from pipeline.stage_one.index import FLAT_DATABASE_BLOCK, drop_self, recall_at_k
from pipeline.stage_one.miners import hard_negatives

K = 32
HARD_NEGATIVES = 8  # mine.hard_negatives_per_anchor
FAISS_DEFAULT_DATABASE_BLOCK = 1024
IMAGES_PER_IDENTITY = 20
IDENTITIES_PER_GROUP = 20
SPREAD = 0.8  # image noise norm relative to its identity centre: same-identity cosine ~ 1 / (1 + SPREAD^2)
GROUP_SPREAD = 1.0  # identity centre's distance from its group centre: same-group cosine ~ 0.5 x 0.6
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
TARGET_RECALL = 0.95


def face_like_vectors(num_vectors: int, dim: int, seed: int, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors clustered by identity and their identity labels, generated chunk by chunk in float32."""
    rng = np.random.default_rng(seed)
    num_identities = max(1, num_vectors // IMAGES_PER_IDENTITY)
    groups = _unit(rng.standard_normal((max(1, num_identities // IDENTITIES_PER_GROUP), dim), dtype=np.float32))
    group_of_identity = rng.integers(0, len(groups), num_identities)
    offsets = rng.standard_normal((num_identities, dim), dtype=np.float32) * np.float32(GROUP_SPREAD / np.sqrt(dim))
    centres = _unit(groups[group_of_identity] + offsets)
    vectors = np.empty((num_vectors, dim), np.float32)
    labels = rng.integers(0, num_identities, num_vectors)
    for start in range(0, num_vectors, chunk):
        stop = min(start + chunk, num_vectors)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(dim))
        vectors[start:stop] = _unit(centres[labels[start:stop]] + noise)
    return vectors, labels


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def search_without_self(index: faiss.Index, queries: np.ndarray, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    similarities, neighbours = index.search(queries, K + 1)
    return drop_self(neighbours, similarities, query_rows, K)


def exact_flat(database: np.ndarray, queries: np.ndarray, query_rows: np.ndarray, database_block: int) -> dict:
    faiss.cvar.distance_compute_blas_database_bs = database_block
    flat = faiss.IndexFlatIP(database.shape[1])
    _, build_seconds = timed(flat.add, database)
    (neighbours, similarities), seconds = timed(search_without_self, flat, queries, query_rows)
    return dict(neighbours=neighbours, similarities=similarities, build_s=build_seconds, search_s=seconds)


def hard_negative_recall(found: np.ndarray, exact: np.ndarray, query_labels: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the exact hard negatives (first 8 other-identity neighbours) that the approximate search mines."""
    no_similarities = np.zeros(exact.shape, np.float32)
    exact_negatives, _ = hard_negatives(exact, no_similarities, query_labels, labels, HARD_NEGATIVES)
    found_negatives, _ = hard_negatives(found, no_similarities, query_labels, labels, HARD_NEGATIVES)
    hits = sum(len(np.intersect1d(f[f >= 0], e[e >= 0])) for f, e in zip(found_negatives, exact_negatives))
    return hits / max(1, int((exact_negatives >= 0).sum()))


def torch_knn(database: np.ndarray, queries: np.ndarray, query_rows: np.ndarray,
              query_block: int = 512, database_block: int = 65536) -> np.ndarray:
    """The baseline: blocked matmul + top-k per database block, merged per query block."""
    database_tensor = torch.from_numpy(database)
    found = []
    for start in range(0, len(queries), query_block):
        query_tensor = torch.from_numpy(queries[start : start + query_block])
        best_similarities, best_rows = [], []
        for database_start in range(0, len(database), database_block):
            similarities = query_tensor @ database_tensor[database_start : database_start + database_block].T
            top = torch.topk(similarities, min(K + 1, similarities.shape[1]), dim=1)
            best_similarities.append(top.values)
            best_rows.append(top.indices + database_start)
        merged = torch.topk(torch.cat(best_similarities, dim=1), K + 1, dim=1)
        neighbours = torch.gather(torch.cat(best_rows, dim=1), 1, merged.indices).numpy()
        found.append(drop_self(neighbours, merged.values.numpy(), query_rows[start : start + query_block], K)[0])
    return np.concatenate(found)


def ivf_nlist(num_vectors: int) -> int:
    """About 4 sqrt(N) lists, a power of two (FAISS's usual guideline)."""
    return 1 << int(round(np.log2(4 * np.sqrt(num_vectors))))


def bench_size(num_vectors: int, dim: int, num_queries: int, seed: int) -> dict:
    (database, labels), generate_seconds = timed(face_like_vectors, num_vectors, dim, seed)
    query_rows = np.sort(np.random.default_rng(seed + 1).choice(num_vectors, num_queries, replace=False))
    queries, query_labels = database[query_rows], labels[query_rows]
    scale = num_vectors / num_queries  # extrapolation from the sampled queries to all-vs-all

    default = exact_flat(database, queries, query_rows, FAISS_DEFAULT_DATABASE_BLOCK)
    tuned = exact_flat(database, queries, query_rows, FLAT_DATABASE_BLOCK)
    exact, exact_seconds = tuned["neighbours"], tuned["search_s"]
    baseline, baseline_seconds = timed(torch_knn, database, queries, query_rows)

    def quality(found: np.ndarray) -> dict:
        return dict(recall_at_10=recall_at_k(found, exact, 10),
                    hard_negative_recall=hard_negative_recall(found, exact, query_labels, labels))

    rows = [
        dict(method=f"FAISS Flat, FAISS default blocking ({FAISS_DEFAULT_DATABASE_BLOCK})", build_s=default["build_s"],
             search_s=default["search_s"], **quality(default["neighbours"])),
        dict(method=f"FAISS Flat, facekd blocking ({FLAT_DATABASE_BLOCK})", build_s=tuned["build_s"],
             search_s=exact_seconds, **quality(exact)),
        dict(method="torch matmul + topk (baseline)", build_s=0.0, search_s=baseline_seconds, **quality(baseline)),
    ]

    nlist = ivf_nlist(num_vectors)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    training = database[np.random.default_rng(seed + 2).choice(num_vectors, min(num_vectors, 40 * nlist), replace=False)]
    _, train_seconds = timed(ivf.train, training)
    _, add_seconds = timed(ivf.add, database)
    sweep = []
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        (found, _), seconds = timed(search_without_self, ivf, queries, query_rows)
        sweep.append(dict(nprobe=nprobe, search_s=seconds, recall_at_32=recall_at_k(found, exact, K), **quality(found)))
        print(f"  IVF{nlist},Flat nprobe={nprobe}: recall@10 {sweep[-1]['recall_at_10']:.4f}, hard-negative recall "
              f"{sweep[-1]['hard_negative_recall']:.4f}, {seconds:.2f} s", flush=True)
        if min(sweep[-1]["recall_at_10"], sweep[-1]["hard_negative_recall"]) >= 0.99:
            break
    for measure in ("recall_at_10", "hard_negative_recall"):
        reaching = [point for point in sweep if point[measure] >= TARGET_RECALL]
        if reaching:
            best = min(reaching, key=lambda point: point["search_s"])
            rows.append(dict(
                method=f"FAISS IVF{nlist},Flat nprobe={best['nprobe']} ({measure} >= {TARGET_RECALL})",
                build_s=train_seconds + add_seconds, search_s=best["search_s"],
                recall_at_10=best["recall_at_10"], hard_negative_recall=best["hard_negative_recall"],
            ))
    for row in rows:
        row["all_vs_all_s"] = row["search_s"] * scale
        row["speedup_vs_exact"] = exact_seconds / row["search_s"]
    return dict(num_vectors=num_vectors, dim=dim, num_queries=num_queries, generate_s=generate_seconds,
                nlist=nlist, ivf_train_s=train_seconds, ivf_add_s=add_seconds, ivf_sweep=sweep, methods=rows)


def print_result(result: dict) -> None:
    print(f"\nN = {result['num_vectors']:,} x {result['dim']}, {result['num_queries']} sampled queries, k = {K}")
    print(f"{'method':62} {'build s':>8} {'search s':>9} {'all-vs-all s*':>14} {'recall@10':>9} {'hard-neg':>9} {'vs exact':>9}")
    for row in result["methods"]:
        print(f"{row['method']:62} {row['build_s']:8.2f} {row['search_s']:9.2f} {row['all_vs_all_s']:14.0f} "
              f"{row['recall_at_10']:9.4f} {row['hard_negative_recall']:9.4f} {row['speedup_vs_exact']:8.2f}x")
    print("* extrapolated linearly from the sampled queries to all N queries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000x128,1000000x128,1000000x512")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="Also write the figures here.")
    options = parser.parse_args()
    faiss.omp_set_num_threads(options.threads)
    torch.set_num_threads(options.threads)
    machine = dict(processor=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=options.threads,
                   faiss=faiss.__version__, torch=torch.__version__, numpy=np.__version__,
                   gpus=faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0)
    print(json.dumps(machine))
    results = []
    for size in options.sizes.split(","):
        num_vectors, dim = (int(part) for part in size.lower().split("x"))
        print(f"\n== {num_vectors:,} x {dim}", flush=True)
        results.append(bench_size(num_vectors, dim, min(options.queries, num_vectors), options.seed))
        print_result(results[-1])
    if options.json_path:
        with open(options.json_path, "w") as out:
            json.dump(dict(machine=machine, k=K, results=results), out, indent=2)


if __name__ == "__main__":
    main()
