"""Data-parallel training across processes (`torchrun`): the process group and gathering rows from every rank.

Outside `torchrun` (WORLD_SIZE unset or 1) both helpers act as if there were one process, so
the same training code runs alone or under DistributedDataParallel.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


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
