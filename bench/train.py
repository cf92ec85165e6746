"""Benchmark of stage two's training step, with its baselines measured in the same run.

  python bench/train.py [--steps 30] [--params params.yaml]

Needs the default pipeline's outputs (`make run` first): the student set, the store, the mined
pairs and the default teacher's checkpoint. Uses the `train` section's student (MobileFaceNet by
default), batch size and KD settings, and reports:
  1. step time, margin only vs margin + ILED + RPSD (memory bank full, pair-aware batches);
  2. time per epoch of offline KD (teacher embeddings read from the store) vs online KD that
     runs the teacher (PyTorch eager, no grad) on every batch: the default teacher (trained
     weights), and a teacher of the published IR50 : MobileFaceNet cost ratio (~15x the student's
     multiply-adds; iResNet-18 width 0.25, random weights: only its speed matters here).
Each figure is the median step time over `--steps` steps after warm-up, data loading included.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.models import build_backbone, count_multiply_adds
from pipeline.sampler import PairBatchSampler, RandomBatchSampler
from pipeline.train import StudentModel, collate_training_batch
from pipeline.training_data import TrainingImages, normalise_images
from stages.params import load_section
from stages.train import student_section, training_inputs
from stages.training import train_config_from

WARM_UP = 5


def image_size(dataset) -> int:
    return dataset.load(0).shape[0]


def endless(loader: DataLoader, sampler: RandomBatchSampler):
    """Batches epoch after epoch (a small data set has fewer steps than the benchmark times)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def median_step_seconds(config, inputs, steps: int, online_teacher: torch.nn.Module | None = None) -> float:
    """Median wall time of a training step (load, forward, KD terms, backward, update, bank)."""
    dataset, targets = inputs.dataset, inputs.targets
    torch.manual_seed(0)
    model = StudentModel(config, image_size(dataset), dataset.num_identities, targets.dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if model.distiller is not None and model.distiller.memory.capacity:
        bank = model.distiller.memory  # start with a full bank, as in the steady state of training
        capacity = bank.capacity
        bank.enqueue(torch.randn(capacity, targets.dim), torch.randn(capacity, config.embedding_dim),
                     torch.randint(0, dataset.num_identities, (capacity,)), torch.arange(capacity) + len(dataset))
    if config.sampler == "pairs":
        sampler = PairBatchSampler(inputs.usable, inputs.pair_offsets, inputs.pair_partners, config.batch_size, 0)
    else:
        sampler = RandomBatchSampler(inputs.usable, config.batch_size, 0)
    loader = DataLoader(TrainingImages(dataset, None if online_teacher else targets), batch_sampler=sampler, collate_fn=collate_training_batch)
    times = []
    batches = endless(loader, sampler)
    for step in range(WARM_UP + steps):
        started = time.perf_counter()
        images, labels, indices, batch_targets = next(batches)
        pixels = normalise_images(images)
        if online_teacher is not None:
            with torch.no_grad():
                batch_targets = online_teacher(pixels)
        embeddings, terms = model(pixels, labels, batch_targets, indices, 1.0)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model.distiller is not None:
            model.distiller.remember(embeddings.detach(), batch_targets, labels, indices)
        if step >= WARM_UP:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--student", default="unified", help="student of params.yaml whose KD settings are timed")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    section = student_section(args.params, args.student)
    kd_config = train_config_from(section)
    margin_config = replace(kd_config, sampler="random", distillation=replace(kd_config.distillation, iled=0.0, rpsd=0.0))
    inputs = training_inputs(section, [kd_config])
    size = image_size(inputs.dataset)

    teacher_section = load_section(args.params, "teacher")
    teacher_config = train_config_from(teacher_section)
    checkpoint = torch.load(Path(teacher_section.get("out", str)) / "checkpoint.pt", map_location="cpu", weights_only=False)
    teacher = build_backbone(teacher_config.backbone, teacher_config.embedding_dim, size, teacher_config.width)
    teacher.load_state_dict({k.removeprefix("backbone."): v for k, v in checkpoint["model"].items() if k.startswith("backbone.")})
    teacher.eval()

    margin = median_step_seconds(margin_config, inputs, args.steps)
    offline = median_step_seconds(kd_config, inputs, args.steps)
    online = median_step_seconds(kd_config, inputs, args.steps, online_teacher=teacher)
    large_teacher = build_backbone("iresnet18", teacher_config.embedding_dim, size, 0.25).eval()
    online_large = median_step_seconds(kd_config, inputs, args.steps, online_teacher=large_teacher)
    student_cost = count_multiply_adds(build_backbone(kd_config.backbone, kd_config.embedding_dim, size, kd_config.width), size)
    steps_per_epoch = len(inputs.usable) // kd_config.batch_size
    d = kd_config.distillation
    print(f"student {kd_config.backbone} width {kd_config.width}, batch {kd_config.batch_size}, "
          f"{torch.get_num_threads()} threads; KD = ILED (lambda {d.iled}) + RPSD (lambda {d.rpsd}, bank {d.rpsd_bank_size}, "
          f"k_neg {d.rpsd_k_neg}); teacher {teacher_config.backbone} width {teacher_config.width}")
    print(f"step: margin only {1000 * margin:.0f} ms, margin + ILED + RPSD {1000 * offline:.0f} ms "
          f"-> KD terms add {100 * (offline / margin - 1):.1f}%")
    for name, model, seconds in (("default teacher", teacher, online), ("IR50:MFN-ratio teacher", large_teacher, online_large)):
        ratio = count_multiply_adds(model, size) / student_cost
        print(f"epoch ({steps_per_epoch} steps), {name} ({ratio:.1f}x the student's multiply-adds): "
              f"offline KD {offline * steps_per_epoch:.1f} s, online KD {seconds * steps_per_epoch:.1f} s "
              f"-> offline is {seconds / offline:.2f}x faster")


if __name__ == "__main__":
    main()
