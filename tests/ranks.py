"""Forked ranks for tests of distributed training: a free port, and a deadline so that a hung rank
fails its test instead of stalling the suite."""
import socket
import time
from typing import Any, Callable

import pytest
import torch.multiprocessing

# Ranks of a tiny run finish in seconds.
RANKS_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_forked_ranks(function: Callable[..., Any], args: tuple, nprocs: int) -> None:
    """`function(rank, *args)` in `nprocs` forked processes (they start at once with everything
    imported); an exception in any is raised here as `ProcessRaisedException`."""
    ranks = torch.multiprocessing.start_processes(function, args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the {nprocs} ranks did not finish in {RANKS_TIMEOUT_S} s: a rank hung (in a collective or teardown?)")
