"""Which training configurations run compiled: `compile` kept only where torch.compile was found
safe on this machine (`compile_guard` decides, probing in child processes, once per machine)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch

from pipeline.data.dataset import FaceDataset
from pipeline.stage_two.compile_guard import ProbeSpec, decide, restart_environment
from pipeline.stage_two.config import TrainConfig


def compile_where_safe(
    configs: list[TrainConfig], dataset: FaceDataset, usable: np.ndarray | None, report: Callable[[str], None]
) -> list[TrainConfig]:
    """`configs`, with `compile` turned off where torch.compile was found unsafe.

    A verdict that needs a variable set from process start (oneDNN's ISA cap) restarts this
    process with it: `exec` keeps the process id, so exit status, Ctrl-C, kill and torchrun are
    unaffected. `report` gets one line per compiled configuration: the path chosen and why.
    """
    if not any(config.compile for config in configs):
        return configs
    input_size = dataset.load(0 if usable is None else int(usable[0])).shape[0]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # as torchrun sets it; the training loop reads it too
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def probe_spec(config: TrainConfig) -> ProbeSpec:
        threads = config.threads or torch.get_num_threads()
        batch_size = config.batch_size // world_size
        return ProbeSpec(config.backbone, config.embedding_dim, config.width, input_size, batch_size, device, threads)

    verdicts = {probe_spec(config): decide(probe_spec(config)) for config in configs if config.compile}
    restart = restart_environment([verdict for verdict, _path in verdicts.values()], os.environ)
    if restart is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, restart)
    for verdict, path in verdicts.values():
        report(f"torch.compile: {verdict.choice()} ({verdict.reason}; verdict cached in {path})")
    return [
        config.model_copy(update={"compile": verdicts[probe_spec(config)][0].compile}) if config.compile else config
        for config in configs
    ]
