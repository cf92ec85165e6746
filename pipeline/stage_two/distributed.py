"""Data-parallel training across processes (`torchrun`): the process group, gathering rows from
every rank, and norms over parameters each rank holds a shard of.

Outside `torchrun` (WORLD_SIZE unset or 1) `init_distributed` and `gather_from_all_ranks` act as
if there were one process, so the same training code runs alone or under DistributedDataParallel.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world_size, device


@torch.no_grad()
def gather_from_all_ranks(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every DDP rank along dim 0, in rank order.

    Identity when torch.distributed is not initialised. Ranks may hold
    different row counts (a short last batch): sizes are exchanged first and rows padded.
    The result carries no gradient; it only feeds memory banks and class centres.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor.detach()
    world_size = dist.get_world_size()
    local_size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    max_size = int(torch.stack(sizes).max())
    padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[: int(size)] for rows, size in zip(gathered, sizes)])


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rows: Tensor, gradient_scale: float) -> Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        ctx.mine = slice(dist.get_rank() * rows.shape[0], (dist.get_rank() + 1) * rows.shape[0])
        ctx.gradient_scale = gradient_scale
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: Tensor) -> tuple[Tensor, None]:
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient)
        return gradient[ctx.mine] * ctx.gradient_scale, None


def gather_with_gradient(rows: Tensor, gradient_scale: float = 1.0) -> Tensor:
    """Every rank's `rows` (the same number on each), concatenated in rank order, with a gradient.

    For a loss that the ranks compute in parts over the gathered rows (each rank its share of the
    columns), the backward sums the parts' gradients over the ranks and hands each rank its own
    rows' gradient, times `gradient_scale`.
    """
    return _GatherWithGradient.apply(rows, gradient_scale)


@torch.no_grad()
def norm_over_ranks(replicated: list[Tensor], sharded: list[Tensor]) -> Tensor:
    """The 2-norm of the `replicated` tensors (the same on every rank) and of every rank's `sharded` ones together.

    The same value on every rank, so gradient clipping scales every replica alike; with nothing
    sharded, exactly `nn.utils.get_total_norm(replicated)`, without any communication.
    """
    norm = nn.utils.get_total_norm(replicated)
    if not sharded:
        return norm
    sharded_square = nn.utils.get_total_norm(sharded).to(norm.device) ** 2
    dist.all_reduce(sharded_square)
    return torch.sqrt(norm**2 + sharded_square)
