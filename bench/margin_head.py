"""Benchmark of the margin head's step: the full softmax vs Partial FC, measured in the same run.

  python bench/margin_head.py [--classes 85000] [--rates 0.1 0.3] [--repeats 10]

Times forward + backward of the head alone (CosFace, s = 64) on random 512-d embeddings, batch
128, labels drawn at random: the cost that grows with the number of identities, without the
backbone's. Heads are timed interleaved (full, then each rate, repeated), so a machine shared
with other jobs slows them alike; the median of each is printed with its ratio to the full head.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.stage_two.losses import margin_head


def step_seconds(head: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """One forward + backward of the head (gradients reach the embeddings and the centres)."""
    head.zero_grad(set_to_none=True)
    started = time.perf_counter()
    head(embeddings.requires_grad_(), labels).backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=85000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    heads = {"full": margin_head("cosface", args.dim, args.classes)} | {
        f"partial {rate}": margin_head("cosface", args.dim, args.classes, sample_rate=rate) for rate in args.rates
    }
    times: dict[str, list[float]] = {name: [] for name in heads}
    for repeat in range(args.repeats + 1):  # the first round warms up
        embeddings = torch.randn(args.batch, args.dim)
        labels = torch.randint(0, args.classes, (args.batch,))
        for name, head in heads.items():
            seconds = step_seconds(head, embeddings.detach().clone(), labels)
            if repeat:
                times[name].append(seconds)
    full = statistics.median(times["full"])
    print(f"margin head forward + backward, {args.classes} classes, batch {args.batch}, dim {args.dim}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats:")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        print(f"  {name}: {1000 * seconds:.1f} ms ({full / seconds:.1f}x faster than the full head)")


if __name__ == "__main__":
    main()
