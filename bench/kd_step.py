"""Benchmark of what the KD terms add to a training step, on synthetic inputs (no pipeline outputs needed).

  python bench/kd_step.py [--params params.yaml] [--student unified] [--repeats 30]

The `train` section's student (backbone, width, batch size, embedding size, margin) and the
student's KD settings (ILED, RPSD with a full memory bank), on random 64 px images, random
teacher targets and labels over 300 identities (the default student set). Times a full step
(forward, KD terms, backward, update, bank) with the margin head only and with margin + KD,
interleaved (one of each per repeat) so that a shared machine slows both alike, and prints
the medians and "KD terms add X %". bench/train.py measures the same on the real default data.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from pipeline.stage_two.student import StudentModel
from pipeline.stage_two.config import TrainConfig
from pipeline.settings import validate_settings

IMAGE_SIZE = 64
IDENTITIES = 300
TEACHER_DIM = 512


def prepared_model(config: TrainConfig) -> tuple[StudentModel, torch.optim.Optimizer]:
    """The student with its optimizer, its memory bank (if any) already full, as in steady training."""
    torch.manual_seed(0)
    model = StudentModel(config, IMAGE_SIZE, IDENTITIES, TEACHER_DIM)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if model.distiller is not None and model.distiller.memory.capacity:
        capacity = model.distiller.memory.capacity
        model.distiller.memory.enqueue(
            torch.randn(capacity, TEACHER_DIM), torch.randn(capacity, config.embedding_dim),
            torch.randint(0, IDENTITIES, (capacity,)), torch.arange(capacity) + 100_000,
        )
    return model, optimizer


def step_seconds(model: StudentModel, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> float:
    """One training step as pipeline/stage_two/train.py runs it (without data loading)."""
    images, labels, indices, targets = batch
    started = time.perf_counter()
    embeddings, terms = model(images, labels, targets, indices, 1.0)
    optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    optimizer.step()
    if model.distiller is not None:
        model.distiller.remember(embeddings.detach(), targets, labels, indices)
    return time.perf_counter() - started


def random_batch(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    labels = torch.randint(0, IDENTITIES, (batch_size,), generator=generator)
    indices = torch.randint(0, 6000, (batch_size,), generator=generator)
    return images, labels, indices, torch.randn(batch_size, TEACHER_DIM, generator=generator)


def interleaved_medians(models: dict[str, tuple[StudentModel, torch.optim.Optimizer]], batch_size: int,
                        repeats: int, warm_up: int = 3) -> dict[str, float]:
    """Median step seconds of each model, the models taking turns on the same batches."""
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(warm_up + repeats):
        batch = random_batch(batch_size, generator)
        for name, (model, optimizer) in models.items():
            seconds = step_seconds(model, optimizer, batch)
            if repeat >= warm_up:
                times[name].append(seconds)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--student", default="unified", help="student of params.yaml whose KD settings are timed")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    kd_config = validate_settings(yaml.safe_load(Path(args.params).read_text())).students[args.student].training_config()
    no_kd = kd_config.distillation.model_copy(update={"iled": 0.0, "rpsd": 0.0})
    margin_config = kd_config.model_copy(update={"distillation": no_kd})
    medians = interleaved_medians(
        {"margin only": prepared_model(margin_config), "margin + KD": prepared_model(kd_config)},
        kd_config.batch_size, args.repeats,
    )
    d = kd_config.distillation
    print(f"student {kd_config.backbone} width {kd_config.width}, batch {kd_config.batch_size}, {IMAGE_SIZE} px, "
          f"{torch.get_num_threads()} threads; KD = ILED (lambda {d.iled}) + RPSD (lambda {d.rpsd}, bank "
          f"{d.rpsd_bank_size}, k_neg {d.rpsd_k_neg}); medians of {args.repeats} interleaved steps")
    margin, kd = medians["margin only"], medians["margin + KD"]
    print(f"step: margin only {1000 * margin:.0f} ms, margin + KD {1000 * kd:.0f} ms -> KD terms add {100 * (kd / margin - 1):.1f}%")


if __name__ == "__main__":
    main()
