"""Benchmark of the margin head's step: the full softmax vs Partial FC, measured in the same run.

  python bench/margin_head.py [--classes 85000] [--rates 0.1 0.3] [--repeats 10] [--ranks 2]

Times a training step of the head alone (CosFace, s = 64): forward, backward and the SGD update
of its centres (momentum 0.9, weight decay 5e-4, as params.yaml), on random 512-d embeddings,
batch 128, labels drawn at random: the cost that grows with the number of identities, without
the backbone's. Heads are timed interleaved (full, then each rate, repeated), so a machine shared
with other jobs slows them alike; the median of each is printed with its ratio to the full head.
Then the head sharded over `--ranks` gloo processes (each with its share of the threads and of
the global batch, as under torchrun), at rate 1 and each rate: per repeat the slowest rank's time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import socket
from multiprocessing.queues import SimpleQueue

import torch
import torch.distributed as dist
import torch.multiprocessing

from pipeline.stage_two.losses import SampledCentresHead, ShardedMarginHead, margin_head, margin_values


LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def optimizer_of(head: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(head.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def step_seconds(head: torch.nn.Module, optimizer: torch.optim.SGD, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """One training step of the head: forward, backward (gradients reach the embeddings and the
    centres) and the update, as the training loop does it (a sampling head updates its sampled centres)."""
    optimizer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    head(embeddings.requires_grad_(), labels).backward()
    optimizer.step()
    if isinstance(head, SampledCentresHead):
        head.update_sampled(LR, MOMENTUM, WEIGHT_DECAY)
    return time.perf_counter() - started


def global_batch(args: argparse.Namespace, repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(repeat)
    return torch.randn(args.batch, args.dim, generator=generator), torch.randint(0, args.classes, (args.batch,), generator=generator)


def sharded_times(rank: int, args: argparse.Namespace, port: int, threads: int, results: SimpleQueue) -> None:
    """One rank: its share of each repeat's global batch through sharded heads; rank 0 puts the slowest rank's times."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    heads = {
        f"sharded over {args.ranks} ranks{'' if rate == 1.0 else f', partial {rate}'}": ShardedMarginHead(
            args.dim, args.classes, rank, args.ranks, rate, **margin_values("cosface")
        )
        for rate in (1.0, *args.rates)
    }
    optimizers = {name: optimizer_of(head) for name, head in heads.items()}
    times: dict[str, list[float]] = {name: [] for name in heads}
    mine = slice(rank * args.batch // args.ranks, (rank + 1) * args.batch // args.ranks)
    for repeat in range(args.repeats + 1):  # the first round warms up
        embeddings, labels = global_batch(args, repeat)
        for name, head in heads.items():
            dist.barrier()
            slowest = torch.tensor(step_seconds(head, optimizers[name], embeddings[mine].clone(), labels[mine]), dtype=torch.float64)
            dist.all_reduce(slowest, dist.ReduceOp.MAX)
            if repeat:
                times[name].append(slowest.item())
    if rank == 0:
        results.put(times)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=85000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2, help="also time the head sharded over this many processes; 1: not")
    args = parser.parse_args()
    torch.manual_seed(0)
    heads = {"full": margin_head("cosface", args.dim, args.classes)} | {
        f"partial {rate}": margin_head("cosface", args.dim, args.classes, sample_rate=rate) for rate in args.rates
    }
    optimizers = {name: optimizer_of(head) for name, head in heads.items()}
    times: dict[str, list[float]] = {name: [] for name in heads}
    for repeat in range(args.repeats + 1):  # the first round warms up
        embeddings, labels = global_batch(args, repeat)
        for name, head in heads.items():
            seconds = step_seconds(head, optimizers[name], embeddings.detach().clone(), labels)
            if repeat:
                times[name].append(seconds)
    del heads, optimizers
    threads = max(1, torch.get_num_threads() // args.ranks)
    if args.ranks > 1:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        results = torch.multiprocessing.get_context("spawn").SimpleQueue()
        torch.multiprocessing.spawn(sharded_times, (args, port, threads, results), nprocs=args.ranks)
        times |= results.get()
    full = statistics.median(times["full"])
    print(f"margin head step (forward, backward, SGD update), {args.classes} classes, batch {args.batch}, dim {args.dim}, "
          f"{torch.get_num_threads()} threads (sharded: {args.ranks} processes x {threads}), "
          f"median of {args.repeats} repeats:")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        print(f"  {name}: {1000 * seconds:.1f} ms ({full / seconds:.1f}x faster than the full head)")


if __name__ == "__main__":
    main()
