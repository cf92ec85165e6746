"""Settings of evaluation: verification (`evaluate`), int8 (`quantize`), timing (`latency`) and the
sweeps over training settings (`ablation`, `baseline_sweep`, `tuning`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.config import ConfigModel
from pipeline.stage_one.config import Device
from pipeline.stage_two.config import TrainSection


class EvaluateConfig(ConfigModel):
    """`facekd evaluate`: the field's verification protocol on every pair set of `pairs`."""

    pairs: str = Field(
        "data/eval/heldout.bin",
        description="One path (dvc.yaml depends on it, and DVC cannot expand a list): a .bin, a pair list, or a folder of them.",
    )
    resize: bool = Field(False, description="Resize pair images to each model's input size.")
    out_root: str = Field("data/eval", description="-> <out_root>/<model>/metrics.json, roc/.")
    device: Device = Field("auto", description="ONNX Runtime provider.")
    batch_size: int = Field(256, gt=0, description="Images per model call.")
    folds: int = Field(10, ge=2, description="Cross-validation folds of the accuracy.")

    @field_validator("pairs", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("expected one path: a .bin file, a pair list, or a folder of them")
        return value


class QuantizeConfig(ConfigModel):
    """`facekd quantize`: static int8 (ONNX Runtime) of a student, beside its fp32 model."""

    calibration_images: int = Field(256, gt=0, description="Training images that calibrate the activation ranges.")
    validation_images: int = Field(
        256, gt=0, description="Other training images on which int8 is compared with fp32 (cosine).",
    )
    seed: int = Field(0, ge=0, description="Seed of the image draw.")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Calibration method.")
    formats: list[Literal["qdq", "qoperator"]] = Field(
        ["qdq", "qoperator"], min_length=1,
        description="Each is built, checked and timed; the fastest that agrees as well as the best is kept.",
    )
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 (with int8 weights: ONNX Runtime's fastest x86 kernels) or int8.",
    )
    agreement_tolerance: float = Field(0.002, gt=0, description="Mean cosine below the best candidate's by at most this.")
    latency_runs: int = Field(200, gt=0, description="Batch-1, 1-thread runs timing each candidate.")


class LatencyConfig(ConfigModel):
    """`facekd latency`: every model on this CPU, ONNX Runtime."""

    runs: int = Field(200, gt=0, description="Warm batch-1 runs per model and setting (1 thread; all threads).")
    throughput_runs: int = Field(20, gt=0, description="Warm runs of a throughput_batch batch on all threads.")
    throughput_batch: int = Field(64, ge=2, description="Batch of the throughput runs.")
    out: str = Field("data/eval/latency.json", description="The report (DVC metrics).")


class SweepConfig(ConfigModel):
    """`facekd ablation --section NAME`: rows of overrides of `train`, each trained under every seed."""

    out_root: str = Field(description="Each row's runs are written under it.")
    table: str = Field(description="The markdown table written.")
    seeds: list[int] = Field(min_length=1, description="Seeds every row is trained with.")
    rows: dict[str, TrainSection] = Field(min_length=1, description="Row name -> overrides of `train` (merged onto it).")
