import socket

import torch
import torch.distributed as dist

from pipeline.stage_two.distributed import gather_from_all_ranks, init_distributed


def test_gather_is_identity_without_distributed():
    rows = torch.randn(3, 2, requires_grad=True)
    gathered = gather_from_all_ranks(rows)
    assert torch.equal(gathered, rows) and not gathered.requires_grad


def test_gather_runs_all_gather_path_in_a_one_rank_group():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        rows = torch.arange(6.0).reshape(3, 2)
        assert torch.equal(gather_from_all_ranks(rows), rows)
    finally:
        dist.destroy_process_group()


def test_outside_torchrun_there_is_one_process_on_the_default_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rank, world_size, device = init_distributed()
    assert (rank, world_size) == (0, 1) and not dist.is_initialized()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
