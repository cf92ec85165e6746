"""Turning a params.yaml training section into a `TrainConfig` (shared by `teacher` and `train`)."""
from __future__ import annotations

from dataclasses import Field, fields
from typing import Any

from pipeline.distill import DistillationConfig
from pipeline.errors import FacekdError
from pipeline.models import BACKBONE_NAMES
from pipeline.train import OptimConfig, TrainConfig
from stages.params import Section

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
    return TrainConfig(**_dataclass_from(section, TrainConfig, IO_KEYS), optim=optim, distillation=distillation)


def memory_budget_bytes(section: Section, key: str, default_gb: float) -> int:
    """A memory budget of a training section (`targets_memory_gb`, `images_memory_gb`) in bytes."""
    return int(section.get(key, float, default_gb) * (1 << 30))
