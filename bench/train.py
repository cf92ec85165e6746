"""Benchmark of stage two's training step, with its baselines measured in the same run.

  python bench/train.py [--steps 30] [--params params.yaml]

Needs the default pipeline's outputs (`make run` first): the student set, the store, the mined
pairs and the default teacher's checkpoint. Uses the `--student`'s backbone (params.yaml's `train`
section: iResNet-18 width 0.0625 by default), batch size and KD settings, and reports:
  1. step time, margin only vs margin + ILED + RPSD (memory bank full, pair-aware batches);
  2. reading one batch of teacher targets from the store: in memory, memory-mapped (stores
     above `targets_memory_gb`), and h5py row by row (the plain way, the baseline);
  3. the KD step with its images decoded once into memory (as training does when they fit in
     `images_memory_gb`) vs decoded from JPEG at every step (the baseline);
  4. time per epoch of offline KD (teacher embeddings read from the store) vs online KD that
     runs the teacher (PyTorch eager, no grad) on every batch: the default teacher (trained
     weights), and a teacher of the published IR50 : MobileFaceNet cost ratio (~14x the default student's
     multiply-adds; iResNet-18 width 0.25, random weights: only its speed matters here).
Each figure is the median step time over `--steps` rounds after warm-up, each round one step of every
setting in turn (interleaved: load from other processes slows all alike), data loading included
(images held in memory, as in training, unless said otherwise).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from pipeline.settings import validate_settings
from pipeline.stage_two.checkpoint import read_checkpoint
from pipeline.stage_two.models import build_backbone, count_multiply_adds
from pipeline.stage_two.sampler import PairBatchSampler, RandomBatchSampler
from pipeline.stage_two.student import StudentModel
from pipeline.stage_two.train import CHECKPOINT, collate_training_batch
from pipeline.stage_two.training_data import (
    TeacherTargets, TrainingImages, decode_in_memory, load_section_inputs, normalise_images,
)

WARM_UP = 5


def image_size(dataset) -> int:
    return dataset.load(0).shape[0]


def endless(loader: DataLoader, sampler: RandomBatchSampler):
    """Batches epoch after epoch (a small data set has fewer steps than the benchmark times)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def training_step(
    config, inputs, images: np.ndarray | None, online_teacher: torch.nn.Module | None = None
) -> Callable[[], float]:
    """A training step of its own student (load, forward, KD terms, backward, update, bank) that returns its
    wall time; `images`: decoded in memory, or None to decode each sample's JPEG."""
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
    loader = DataLoader(
        TrainingImages(dataset, None if online_teacher else targets, images),
        batch_sampler=sampler, collate_fn=collate_training_batch,
    )
    batches = endless(loader, sampler)

    def step() -> float:
        started = time.perf_counter()
        batch_images, labels, indices, batch_targets = next(batches)
        pixels = normalise_images(batch_images)
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
        return time.perf_counter() - started

    return step


def interleaved_step_seconds(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each round runs one step of every setting in turn, so load from other processes (or a CPU
    clocking down) slows all of them alike; the times of the rounds after the warm-up."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(WARM_UP + rounds):
        for name, step in steps.items():
            seconds = step()
            if round_index >= WARM_UP:
                times[name].append(seconds)
    return times


def batch_read_seconds(read_row, rows: np.ndarray, views: np.ndarray, batch_size: int) -> float:
    """Median time to read `batch_size` target rows as float32, as the training data path does."""
    times = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        started = time.perf_counter()
        for row, view in zip(rows[start:start + batch_size].tolist(), views[start:start + batch_size].tolist()):
            read_row(row, view).astype(np.float32)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def target_read_seconds(store_path: str, batch_size: int, batches: int = 50) -> dict[str, float]:
    """Per-batch target reads at random rows, each way measured over the same rows (warm page cache)."""
    in_memory, mapped = TeacherTargets(store_path), TeacherTargets(store_path, memory_budget_bytes=0)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, in_memory.shape[0], batches * batch_size)
    views = rng.integers(0, 2, batches * batch_size)
    with h5py.File(store_path, "r") as store:
        embeddings = store["embeddings"]
        return {
            "in memory": batch_read_seconds(in_memory.get, rows, views, batch_size),
            "memory-mapped": batch_read_seconds(mapped.get, rows, views, batch_size),
            "h5py row reads": batch_read_seconds(lambda row, view: embeddings[row, view], rows, views, batch_size),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--student", default="unified", help="student of params.yaml whose KD settings are timed")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    settings = validate_settings(yaml.safe_load(Path(args.params).read_text()))
    section = settings.students[args.student]
    kd_config = section.training_config()
    no_kd = kd_config.distillation.model_copy(update={"iled": 0.0, "rpsd": 0.0})
    margin_config = kd_config.model_copy(update={"sampler": "random", "distillation": no_kd})
    inputs = load_section_inputs(section, [kd_config])
    size = image_size(inputs.dataset)

    teacher_config = settings.teacher
    checkpoint = read_checkpoint(Path(teacher_config.out) / CHECKPOINT)
    teacher = build_backbone(teacher_config.backbone, teacher_config.embedding_dim, size, teacher_config.width)
    teacher.load_state_dict({k.removeprefix("backbone."): v for k, v in checkpoint["model"].items() if k.startswith("backbone.")})
    teacher.eval()

    reads = target_read_seconds(section.store, kd_config.batch_size)
    images = decode_in_memory(inputs.dataset, inputs.usable, 1 << 40)
    large_teacher = build_backbone("iresnet18", teacher_config.embedding_dim, size, 0.25).eval()
    times = interleaved_step_seconds({
        "margin": training_step(margin_config, inputs, images),
        "offline": training_step(kd_config, inputs, images),
        "offline decoding": training_step(kd_config, inputs, None),
        "online": training_step(kd_config, inputs, images, online_teacher=teacher),
        "online large": training_step(kd_config, inputs, images, online_teacher=large_teacher),
    }, args.steps)
    margin, offline, offline_decoding, online, online_large = (statistics.median(seconds) for seconds in times.values())
    overheads = sorted(kd / alone - 1 for kd, alone in zip(times["offline"], times["margin"]))
    student_cost = count_multiply_adds(build_backbone(kd_config.backbone, kd_config.embedding_dim, size, kd_config.width), size)
    steps_per_epoch = len(inputs.usable) // kd_config.batch_size
    d = kd_config.distillation
    print(f"student {kd_config.backbone} width {kd_config.width}, batch {kd_config.batch_size}, "
          f"{torch.get_num_threads()} threads; KD = ILED (lambda {d.iled}) + RPSD (lambda {d.rpsd}, bank {d.rpsd_bank_size}, "
          f"k_neg {d.rpsd_k_neg}); teacher {teacher_config.backbone} width {teacher_config.width}")
    print(f"step: margin only {1000 * margin:.0f} ms, margin + ILED + RPSD {1000 * offline:.0f} ms "
          f"-> KD terms add {100 * (offline / margin - 1):.1f}% (medians of {args.steps} interleaved rounds; per round: "
          f"quartiles {100 * overheads[len(overheads) // 4]:.1f} / {100 * statistics.median(overheads):.1f} / "
          f"{100 * overheads[3 * len(overheads) // 4]:.1f}%)")
    print(f"target reads per batch of {kd_config.batch_size}: " + ", ".join(
        f"{way} {1000 * seconds:.2f} ms" for way, seconds in reads.items())
        + f" -> memory-mapped is {reads['h5py row reads'] / reads['memory-mapped']:.1f}x faster than h5py row reads")
    print(f"KD step: images in memory {1000 * offline:.0f} ms, decoded at every step {1000 * offline_decoding:.0f} ms "
          f"-> in memory is {offline_decoding / offline:.2f}x faster")
    for name, model, seconds in (("default teacher", teacher, online), ("IR50:MFN-ratio teacher", large_teacher, online_large)):
        ratio = count_multiply_adds(model, size) / student_cost
        print(f"epoch ({steps_per_epoch} steps), {name} ({ratio:.1f}x the student's multiply-adds): "
              f"offline KD {offline * steps_per_epoch:.1f} s, online KD {seconds * steps_per_epoch:.1f} s "
              f"-> offline is {seconds / offline:.2f}x faster")


if __name__ == "__main__":
    main()
