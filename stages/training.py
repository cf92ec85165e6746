"""Turning a params.yaml training section into a `TrainConfig`, compiled only where that is safe
(shared by `teacher`, `train` and `ablation`)."""
from __future__ import annotations

import os
import sys
from dataclasses import Field, fields, replace
from typing import TYPE_CHECKING, Any

import click
import torch

from pipeline.stage_two.compile_guard import ProbeSpec, decide, restart_environment
from pipeline.stage_two.distill import DistillationConfig
from pipeline.errors import FacekdError
from pipeline.stage_two.models import BACKBONE_NAMES
from pipeline.stage_two.train import OptimConfig, TrainConfig
from stages.params import Section

if TYPE_CHECKING:
    import numpy as np

    from pipeline.data.dataset import FaceDataset

SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
# Keys of a training section that say where data comes from and goes to, not how to train.
IO_KEYS = ("dataset", "store", "pairs", "out", "out_root", "targets_memory_gb", "images_memory_gb")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def _typed_value(section: Section, spec: Field) -> Any:
    """The value of field `spec` in `section`, checked against the field's annotation."""
    annotation = str(spec.type)  # a string: the dataclasses use postponed annotations
    value = section.values[spec.name]
    if value is None and annotation.endswith("| None"):
        return None
    if annotation.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(item, int) for item in value):
            raise FacekdError(f"{section.where(spec.name)} is {value!r}; expected a list of integers")
        return tuple(value)
    return section.get(spec.name, SCALAR_TYPES[annotation.split(" |")[0]])


def _dataclass_from(section: Section, cls: type, ignored: tuple[str, ...] = ()) -> Any:
    """Build dataclass `cls` from `section`; an unknown key is an error, so a typo cannot pass silently."""
    nested = {"optim", "distillation"}
    known = {spec.name: spec for spec in fields(cls) if spec.name not in nested}
    unknown = sorted(set(section.values) - set(known) - set(ignored) - nested)
    if unknown:
        raise FacekdError(f"{section.path}: {section.name} has unknown keys {unknown}; expected some of {sorted(known)}")
    return {name: _typed_value(section, spec) for name, spec in known.items() if name in section.values}


def train_config_from(section: Section) -> TrainConfig:
    """A `TrainConfig` from a training section with optional `optim` and `distillation` sub-sections."""
    if "backbone" in section.values:
        section.choice("backbone", BACKBONE_NAMES)
    section.choice("margin", ("arcface", "cosface"), "arcface")
    optim = OptimConfig(**_dataclass_from(section.sub("optim"), OptimConfig)) if "optim" in section.values else OptimConfig()
    distillation = (
        DistillationConfig(**_dataclass_from(section.sub("distillation"), DistillationConfig))
        if "distillation" in section.values else DistillationConfig()
    )
    values = _dataclass_from(section, TrainConfig, IO_KEYS)
    try:
        return TrainConfig(**values, optim=optim, distillation=distillation)
    except FacekdError as error:
        raise FacekdError(f"{section.path}: {section.name}: {error}") from None


def memory_budget_bytes(section: Section, key: str, default_gb: float) -> int:
    """A memory budget of a training section (`targets_memory_gb`, `images_memory_gb`) in bytes."""
    return int(section.get(key, float, default_gb) * (1 << 30))


def compile_where_safe(configs: list[TrainConfig], dataset: FaceDataset, usable: np.ndarray | None = None) -> list[TrainConfig]:
    """`configs`, with `compile` turned off where torch.compile was found unsafe on this machine.

    `pipeline.stage_two.compile_guard` decides (probing in child processes, once per machine). A verdict
    that needs a variable set from process start (oneDNN's ISA cap) restarts this process with
    it: `exec` keeps the process id, so exit status, Ctrl-C, kill and torchrun are unaffected.
    Prints one line per compiled configuration: the path chosen and why.
    """
    if not any(config.compile for config in configs):
        return configs
    input_size = dataset.load(0 if usable is None else int(usable[0])).shape[0]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
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
        click.echo(f"torch.compile: {verdict.choice()} ({verdict.reason}; verdict cached in {path})", err=True)
    return [
        replace(config, compile=verdicts[probe_spec(config)][0].compile) if config.compile else config
        for config in configs
    ]
