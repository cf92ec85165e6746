"""Per-step cost of the pair-aware batch sampler at MS1MV2 / WebFace42M sizes, same run.

    .venv/bin/python bench/sampler.py [--sizes 300000,5800000,42000000] [--steps 200]

A random pair table of 12 partners per anchor (8 hard negatives + 4 hard positives, as
`facekd mine` keeps) over N samples, batch 128. Times `PairBatchSampler.global_batches` per
step (median over `--steps` steps, the epoch's permutation excluded), next to the work the
first implementation did on top at every step, a diff over all N + 1 offsets (the baseline).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pipeline.stage_two.sampler import PairBatchSampler

PARTNERS_PER_ANCHOR = 12
BATCH_SIZE = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="300000,5800000,42000000")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for size in (int(text) for text in args.sizes.split(",")):
        offsets = np.arange(0, (size + 1) * PARTNERS_PER_ANCHOR, PARTNERS_PER_ANCHOR, dtype=np.int64)
        partners = np.random.default_rng(0).integers(0, size, size * PARTNERS_PER_ANCHOR)
        sampler = PairBatchSampler(np.arange(size), offsets, partners, BATCH_SIZE, seed=0)
        batches = sampler.global_batches()
        next(batches)  # the epoch's permutation
        step_times, diff_times = [], []
        for _ in range(args.steps):
            started = time.perf_counter()
            next(batches)
            step_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            np.diff(offsets)
            diff_times.append(time.perf_counter() - started)
        step, diff = statistics.median(step_times), statistics.median(diff_times)
        steps_per_epoch = len(sampler)
        print(f"N = {size}: {1000 * step:.3f} ms a step ({step * steps_per_epoch:.1f} s an epoch of {steps_per_epoch} steps); "
              f"the removed per-step diff alone: {1000 * diff:.2f} ms ({diff * steps_per_epoch:.0f} s an epoch)")
        del batches, sampler, partners, offsets


if __name__ == "__main__":
    main()
