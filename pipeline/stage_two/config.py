"""Settings of stage two: how a student (or the default teacher) trains, and with which KD terms.

These models are the one place where each training default and its meaning live: params.yaml's
`train`, `teacher`, `students.<name>` and the sweep rows are validated by them, and library
callers build the same `TrainConfig` (a bad value raises `FacekdError` naming the field).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.config import MOST_PROCESSES, ConfigModel, InvalidSetting

# pipeline.stage_two.models.BACKBONE_NAMES, spelt out so that validating settings does not import torch
Backbone = Literal["mobilefacenet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]
KD_WEIGHTS = ("raw_l2", "fc", "rkd", "sp", "adaarc", "iled", "rpsd")


class OptimConfig(ConfigModel):
    """SGD with momentum; `lr` is the rate for a global batch of 512 (scaled linearly)."""

    lr: float = Field(0.4, description="Learning rate per 512 samples, scaled with the global batch.")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    schedule: Literal["poly", "step"] = Field(
        "poly", description="poly: decay to 0 as (1 - progress)^power; step: x gamma at milestones.",
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Epochs of linear warm-up.")
    milestones: tuple[int, ...] = Field((), strict=False, description="Epochs at which `step` multiplies the rate by gamma.")
    gamma: float = Field(0.1, gt=0, description="Factor of `step` at each milestone.")
    power: float = Field(2.0, ge=0, description="Exponent of `poly`.")
    clip_grad_norm: float = Field(5.0, description="Gradient-norm clipping; <= 0: no clipping.")

    @field_validator("lr")
    @classmethod
    def _positive_finite(cls, value: float) -> float:
        if not 0 < value < math.inf:  # also refuses NaN, which would pass `lr <= 0`
            raise ValueError("expected a positive finite number")
        return value


class DistillationConfig(ConfigModel):
    """Weights (lambda) and knobs of the KD terms; a zero weight leaves a term out."""

    raw_l2: float = Field(0.0, ge=0, description="Raw L2 between student (projected) and teacher embeddings.")
    fc: float = Field(0.0, ge=0, description="Feature consistency: cosine distance to the teacher.")
    rkd: float = Field(0.0, ge=0, description="Relational KD (Park et al.): distance and angle.")
    sp: float = Field(0.0, ge=0, description="Similarity-preserving KD (Tung and Mori).")
    adaarc: float = Field(0.0, ge=0, description="AdaArcDistill.")
    adaarc_scale: float = Field(64.0, gt=0, description="AdaArcDistill's scale s.")
    adaarc_margin: float = Field(0.45, ge=0, description="AdaArcDistill's margin.")
    iled: float = Field(
        0.0, ge=0, description="lambda_I of ILED; d = ||s^ - t^||^2 = 2 (1 - cos), so beta = 0 is exactly FC.",
    )
    iled_beta: float = Field(1.0, ge=0, description="ILED's weight of the hard samples.")
    iled_rho0: float = Field(1.0, gt=0, le=1, description="ILED's hard fraction at the start.")
    iled_rho_min: float = Field(0.3, gt=0, le=1, description="ILED's hard fraction after the ramp.")
    iled_ramp_epochs: float | None = Field(None, gt=0, description="Epochs of ILED's ramp; null: half of the epochs.")
    rpsd: float = Field(0.0, ge=0, description="Weight of RPSD (relational pair distillation).")
    rpsd_k_neg: int = Field(64, description="Hardest negatives RPSD keeps per anchor; <= 0: no mining, every pair.")
    rpsd_bank_size: int = Field(
        4096, ge=0, description="RPSD memory-bank size; 0: none. method.md's 16384 costs ~1 s a step on 2 CPU cores.",
    )
    rpsd_variant: Literal["mse", "kl"] = Field("mse", description="How RPSD compares similarity distributions.")
    rpsd_temperature: float = Field(0.1, gt=0, description="RPSD's softmax temperature (kl).")

    @property
    def uses_teacher(self) -> bool:
        return any(getattr(self, name) > 0 for name in KD_WEIGHTS)


class TrainConfig(ConfigModel):
    """How one backbone trains (not where its data is): the run's fingerprint covers exactly these."""

    backbone: Backbone = Field("iresnet18", description="Student backbone.")
    embedding_dim: int = Field(512, gt=0, description="Embedding size.")
    width: float = Field(0.0625, gt=0, description="Width multiplier of the backbone.")
    margin: Literal["arcface", "cosface"] = Field(
        "cosface", description="Margin head: cosface (m = 0.35) or arcface (m = 0.5); ArcFace did not converge well for tiny students here."
    )
    margin_scale: float = Field(64.0, gt=0, description="Scale s of the margin head.")
    margin_value: float | None = Field(None, ge=0, description="Margin m; null: 0.35 for CosFace, 0.5 for ArcFace.")
    margin_weight: float = Field(1.0, ge=0, description="Weight of the margin head; 0: none (the AdaArcDistill row).")
    margin_sample_rate: float = Field(
        1.0, gt=0, le=1, description="< 1: Partial FC, each step's softmax over this fraction of the class centres."
    )
    epochs: int = Field(10, gt=0, description="Training epochs.")
    batch_size: int = Field(128, description="Global batch over all ranks; BatchNorm needs 2 or more samples per rank.")
    seed: int = Field(0, ge=0, description="Seed of weights, sampling and flips.")
    sampler: Literal["random", "pairs"] = Field(
        "random", description="random, or pairs: half anchors, half their mined partners.",
    )
    flip: bool = Field(True, description="Random horizontal flips.")
    num_workers: int = Field(0, ge=0, le=MOST_PROCESSES, description="Loader processes.")
    threads: int = Field(0, ge=0, le=MOST_PROCESSES, description="torch intra-op threads per process; 0: torch's default (all cores).")
    compile: bool = Field(False, description="torch.compile the backbone (probed first; eager where unsafe).")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)

    @field_validator("batch_size")
    @classmethod
    def _batch_over_ranks(cls, batch_size: int, info: ValidationInfo) -> int:
        world_size = (info.context or {}).get("world_size", 1)  # training processes (torchrun's WORLD_SIZE)
        ranks = f" x world size {world_size}" if world_size > 1 else ""
        if batch_size < 2 * world_size:
            raise ValueError(f"expected at least 2{ranks} (BatchNorm needs 2 or more samples per rank per step)")
        if batch_size % world_size:
            raise ValueError(f"expected a multiple of the world size {world_size}")
        return batch_size

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> TrainConfig:
        world_size = (info.context or {}).get("world_size", 1)
        if self.sampler == "pairs" and self.batch_size % (2 * world_size):
            raise InvalidSetting(
                "batch_size", self.batch_size,
                f"expected a multiple of 2 x world size ({2 * world_size}): the pairs sampler fills each rank's batch "
                "with (anchor, partner) pairs",
            )
        if self.margin_weight <= 0 and not self.distillation.uses_teacher:
            raise InvalidSetting("margin_weight", self.margin_weight, "expected > 0 when no distillation term is set: nothing to train")
        return self

    def training_config(self) -> TrainConfig:
        """Just the training settings (a section's paths and memory budgets left out)."""
        return TrainConfig.model_validate(self.model_dump(include=set(TrainConfig.model_fields)))

    def fingerprint(self) -> str:
        """Identifies these settings (the run fingerprint in `pipeline.stage_two.train` adds code and data)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


class _TrainingSection(TrainConfig):
    """A params.yaml section that trains a backbone: its settings, its images and their memory budget."""

    dataset: str = Field(description="Training images: an image folder or a RecordIO folder.")
    images_memory_gb: float = Field(
        2.0, ge=0, description="Training sets up to this size, decoded, are decoded once and kept in memory.",
    )

    @property
    def images_memory_bytes(self) -> int:
        return int(self.images_memory_gb * (1 << 30))


class TrainSection(_TrainingSection):
    """params.yaml `train` (and each student, merged onto it): the settings plus where data comes from."""

    dataset: str = Field("data/synth/student", description="Training images: an image folder or a RecordIO folder.")
    store: str = Field("data/store/teacher_embeddings.h5", description="The teacher's embeddings of `dataset` (stage one).")
    pairs: str = Field("data/pairs/pairs.h5", description="The mined pair table (read by the pairs sampler).")
    out_root: str = Field("data/students", description="Students are written to <out_root>/<name>/.")
    targets_memory_gb: float = Field(
        8.0, ge=0, description="Stores up to this size are read into memory (float16), larger ones memory-mapped.",
    )

    @property
    def targets_memory_bytes(self) -> int:
        return int(self.targets_memory_gb * (1 << 30))


def _gigabytes_default(field: str) -> int:
    return int(TrainSection.model_fields[field].default * (1 << 30))


# the budgets of library callers that pass none: the schema's defaults, in bytes
IMAGES_MEMORY_BYTES = _gigabytes_default("images_memory_gb")
TARGETS_MEMORY_BYTES = _gigabytes_default("targets_memory_gb")


class TeacherSection(_TrainingSection):
    """params.yaml `teacher`: the default teacher, a margin-loss backbone trained on the teacher set."""

    dataset: str = Field("data/synth/teacher", description="The teacher's training images.")
    out: str = Field("data/teacher", description="Folder of the teacher's checkpoint, log and model.onnx.")
    backbone: Backbone = Field("iresnet34", description="Teacher backbone.")
    width: float = Field(0.125, gt=0, description="Width multiplier of the backbone.")
    num_workers: int = Field(
        1, ge=0, le=MOST_PROCESSES, description="Loader processes: one decodes the next batch (same weights, ~10% faster here).",
    )
    compile: bool = Field(
        True, description="torch.compile: ~1.8x faster on CPU after a ~1 min compile, where a probe finds it safe.",
    )

    @model_validator(mode="after")
    def _no_distillation(self) -> TeacherSection:
        if self.distillation.uses_teacher:
            raise InvalidSetting("distillation", self.distillation.model_dump(), "expected no distillation terms: the teacher has no teacher")
        return self
