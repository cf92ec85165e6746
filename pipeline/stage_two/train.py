"""Stage two: the training loop (plain PyTorch), for students and for the default teacher.

One loop trains a backbone with a margin head plus the KD terms of a `DistillationConfig`,
reading teacher embeddings from the store. It checkpoints at every epoch end; a rerun resumes
from the checkpoint and repeats the interrupted epoch exactly (samplers, flips and RNG state are
functions of the seed and the epoch), so its final weights equal an uninterrupted run's.
Under `torchrun` it trains with DistributedDataParallel (gloo on CPU, NCCL on GPU); the learning
rate scales with the global batch, as in insightface (base rate per 512 samples).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.stage_two.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data.dataset import FaceDataset
from pipeline.stage_two.distill import DistillationConfig, Distiller
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer, write_text_atomically, written_atomically
from pipeline.stage_two.losses import margin_head
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import export_onnx
from pipeline.stage_two.sampler import PairBatchSampler, RandomBatchSampler
from pipeline.stage_two.training_data import TeacherTargets, TrainingImages, decode_in_memory, normalise_images

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.onnx"
LOG = "train_log.csv"
METRICS = "train_metrics.json"


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum; `lr` is the rate for a global batch of 512 (scaled linearly)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"  # "poly" or "step"
    warmup_epochs: float = 1.0
    milestones: tuple[int, ...] = ()  # epochs at which "step" multiplies the rate by gamma
    gamma: float = 0.1
    power: float = 2.0  # exponent of "poly"
    clip_grad_norm: float = 5.0  # <= 0: no clipping

    def __post_init__(self) -> None:
        if self.schedule not in ("poly", "step"):
            raise FacekdError(f"learning-rate schedule is {self.schedule!r}; expected 'poly' or 'step'")
        if not 0 < self.lr < math.inf:  # also refuses NaN, which would pass `lr <= 0`
            raise FacekdError(f"learning rate is {self.lr}; expected a positive finite number")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str
    embedding_dim: int = 512
    width: float = 1.0
    margin: str = "arcface"  # or "cosface"
    margin_scale: float = 64.0
    margin_value: float | None = None  # None: 0.5 for ArcFace, 0.35 for CosFace
    margin_weight: float = 1.0  # 0: no margin head (e.g. the AdaArcDistill row)
    margin_sample_rate: float = 1.0  # < 1: Partial FC, the softmax over this fraction of the class centres
    epochs: int = 10
    batch_size: int = 256  # global, over all ranks
    seed: int = 0
    sampler: str = "random"  # or "pairs"
    flip: bool = True
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads per process; 0: torch's default
    compile: bool = False  # torch.compile the backbone: ~1.8x faster on CPU; stages probe first that it is safe
    optim: OptimConfig = field(default_factory=OptimConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "pairs"):
            raise FacekdError(f"sampler is {self.sampler!r}; expected 'random' or 'pairs'")
        if self.epochs <= 0:
            raise FacekdError(f"epochs is {self.epochs}; expected a positive int")
        if self.batch_size < 2:
            raise FacekdError(
                f"batch_size is {self.batch_size}; expected at least 2 (BatchNorm needs 2 or more samples per rank per step)"
            )
        if self.sampler == "pairs" and self.batch_size % 2:
            raise FacekdError(
                f"batch_size is {self.batch_size}; the pairs sampler needs an even batch (anchor, partner, ...)"
            )
        if self.margin_weight <= 0 and not self.distillation.uses_teacher:
            raise FacekdError("margin_weight is 0 and no distillation term is set: nothing to train")
        if not 0 < self.margin_sample_rate <= 1:
            raise FacekdError(f"margin_sample_rate is {self.margin_sample_rate}; expected a fraction in (0, 1]")

    def fingerprint(self) -> str:
        """Identifies the settings and the library code a checkpoint was made with.

        A checkpoint is resumed only under the same fingerprint: after a change of settings or of
        the code, a kept checkpoint (DVC `persist`) must not pass for the new run's result.
        """
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for source in sorted(Path(__file__).parents[1].rglob("*.py")):
            digest.update(source.read_bytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    resumed_from_epoch: int
    metrics: dict[str, Any]


def learning_rate(config: OptimConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Linear warm-up, then polynomial decay to 0 or step decay at the milestones."""
    epoch = step / steps_per_epoch
    if epoch < config.warmup_epochs:
        return base_lr * (step + 1) / (config.warmup_epochs * steps_per_epoch)
    if config.schedule == "step":
        return base_lr * config.gamma ** sum(epoch >= milestone for milestone in config.milestones)
    progress = (epoch - config.warmup_epochs) / max(epochs - config.warmup_epochs, 1e-9)
    return base_lr * max(0.0, 1.0 - progress) ** config.power


class StudentModel(nn.Module):
    """Backbone + margin head + KD terms in one module, so DDP synchronises all their gradients."""

    def __init__(self, config: TrainConfig, input_size: int, num_classes: int, teacher_dim: int | None) -> None:
        super().__init__()
        self.backbone = build_backbone(config.backbone, config.embedding_dim, input_size, config.width)
        self.head = (
            margin_head(
                config.margin, config.embedding_dim, num_classes, config.margin_scale, config.margin_value,
                config.margin_sample_rate, config.seed,
            )
            if config.margin_weight > 0 else None
        )
        self.margin_weight = config.margin_weight
        self.distiller = (
            Distiller(config.distillation, config.embedding_dim, teacher_dim, num_classes, config.epochs)
            if config.distillation.uses_teacher and teacher_dim else None
        )

    def forward(
        self, images: Tensor, labels: Tensor, targets: Tensor, indices: Tensor, epoch: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        embeddings = self.backbone(images)
        terms: dict[str, Tensor] = {}
        if self.head is not None:
            terms["margin"] = self.margin_weight * self.head(embeddings, labels)
        if self.distiller is not None:
            terms.update(self.distiller(embeddings, targets, labels, indices, epoch))
        return embeddings, terms


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world_size, device


def run_fingerprint(
    config: TrainConfig,
    dataset: FaceDataset,
    targets: TeacherTargets | None,
    pair_offsets: np.ndarray | None,
    pair_partners: np.ndarray | None,
) -> str:
    """Settings + code (`TrainConfig.fingerprint`) + the data a run learns from.

    A kept checkpoint is resumed only when all of them are unchanged: after a new teacher pass,
    new images or new mined pairs, it must not pass for the new run's result.
    """
    digest = hashlib.sha256(config.fingerprint().encode())
    digest.update(f"{dataset.fingerprint()}\0{dataset.num_identities}".encode())
    if targets is not None:
        digest.update(targets.store_hash.encode())
    for array in (pair_offsets, pair_partners):
        if array is not None:
            _hash_int64(digest, array)
    return digest.hexdigest()


def _hash_int64(digest: Any, array: np.ndarray, chunk: int = 1 << 22) -> None:
    """Feed a 1-D `array` into `digest` as native int64 bytes, a chunk at a time.

    Gives the digest of `astype(int64).tobytes()` (the fingerprints of existing checkpoints stay
    valid) without a full copy of a pair table that can hold billions of entries.
    """
    for start in range(0, len(array), chunk):
        digest.update(memoryview(np.ascontiguousarray(array[start:start + chunk], dtype=np.int64)))


def non_finite_loss_message(
    dataset: FaceDataset, terms: dict[str, Tensor], batch_targets: Tensor, indices: Tensor, epoch: int, step: int,
    global_step: int,
) -> str:
    """Why a step's loss is not finite: bad teacher targets, the loss settings, or (only then) the learning rate."""
    bad_terms = [name for name, value in terms.items() if not math.isfinite(value.item())]
    where = f"the loss became non-finite at epoch {epoch + 1}, step {step} (terms {', '.join(bad_terms)})"
    bad_targets = indices[~torch.isfinite(batch_targets).all(dim=1)].tolist()
    if bad_targets:
        sources = ", ".join(dataset.source(index) for index in bad_targets[:5])
        return f"{where}: the teacher embeddings of {len(bad_targets)} samples ({sources}) are not finite; embed the store again"
    if global_step == 0:
        return f"{where} before any update, on finite inputs: check margin_scale and the distillation weights"
    return f"{where} on finite inputs; lower the learning rate"


def collate_training_batch(items: list[tuple[Tensor, int, int, bool, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    images, labels, indices, _flips, targets = zip(*items)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices), torch.stack(targets)


def train(
    config: TrainConfig,
    dataset: FaceDataset,
    out_dir: str | Path,
    *,
    targets: TeacherTargets | None = None,
    usable: np.ndarray | None = None,
    pair_offsets: np.ndarray | None = None,
    pair_partners: np.ndarray | None = None,
    images_memory_bytes: int = 2 << 30,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a backbone on `dataset`; write checkpoint, log, metrics and ONNX to `out_dir`.

    `targets`: the teacher embeddings of `dataset` (needed by every KD term). `usable`: the
    sample indices to train on (default all). `pair_offsets`/`pair_partners`: the mined pair
    table in CSR form, needed by the "pairs" sampler. Training images that fit in
    `images_memory_bytes` once decoded are decoded once and kept in memory (the same pixels).
    One run writes `out_dir` at a time: a second one is refused at once, naming the first's PID.
    """
    out_dir = Path(out_dir)
    rank, world_size, device = _distributed()
    with exclusive_writer(out_dir / CHECKPOINT) if rank == 0 else nullcontext():
        return _train(
            config, dataset, out_dir, rank, world_size, device, targets, usable, pair_offsets, pair_partners,
            images_memory_bytes, progress,
        )


def _train(
    config: TrainConfig,
    dataset: FaceDataset,
    out_dir: Path,
    rank: int,
    world_size: int,
    device: torch.device,
    targets: TeacherTargets | None,
    usable: np.ndarray | None,
    pair_offsets: np.ndarray | None,
    pair_partners: np.ndarray | None,
    images_memory_bytes: int,
    progress: bool,
) -> TrainResult:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.distillation.uses_teacher and targets is None:
        raise FacekdError("the distillation terms need the teacher embeddings (targets) of the training set")
    if targets is not None and targets.shape[0] != len(dataset):
        raise FacekdError(f"the store holds {targets.shape[0]} embeddings but the dataset has {len(dataset)} images")
    usable = np.arange(len(dataset)) if usable is None else usable
    if config.sampler == "pairs":
        if pair_offsets is None or pair_partners is None:
            raise FacekdError("sampler 'pairs' needs the mined pair table")
        sampler: RandomBatchSampler = PairBatchSampler(
            usable, pair_offsets, pair_partners, config.batch_size, config.seed, rank, world_size, config.flip
        )
    else:
        sampler = RandomBatchSampler(usable, config.batch_size, config.seed, rank, world_size, config.flip)
    first_image = dataset.load(int(usable[0]))
    if first_image.shape[0] != first_image.shape[1]:
        raise FacekdError(
            f"{dataset.source(int(usable[0]))}: image is {first_image.shape[1]}x{first_image.shape[0]}; "
            "training expects square, aligned faces"
        )
    input_size = first_image.shape[0]
    fingerprint = run_fingerprint(config, dataset, targets, pair_offsets, pair_partners)
    torch.manual_seed(config.seed)
    model = StudentModel(config, input_size, dataset.num_identities, targets.dim if targets else None).to(device)
    base_lr = config.optim.lr * config.batch_size / 512
    optimizer = torch.optim.SGD(
        model.parameters(), lr=base_lr, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay
    )
    start_epoch = 0
    checkpoint_path = out_dir / CHECKPOINT
    history: list[dict[str, float]] = []
    checkpoint = load_checkpoint(checkpoint_path, device)
    if checkpoint is not None:
        if checkpoint.get("run_fingerprint") == fingerprint and checkpoint["world_size"] == world_size:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["rng_state"])
            start_epoch, history = checkpoint["epoch"], checkpoint["history"]
            if rank == 0:
                log.info("resuming %s from epoch %d", out_dir, start_epoch)
        elif rank == 0:
            log.warning("%s was made with other settings, data, code or world size; training from scratch", checkpoint_path)
    if config.compile:
        model.backbone.compile()
    trained = model if world_size == 1 else DistributedDataParallel(model, forward_sync_buffers=False)
    images = decode_in_memory(dataset, usable, images_memory_bytes, progress and rank == 0)
    loader = DataLoader(
        TrainingImages(dataset, targets, images), batch_sampler=sampler, num_workers=config.num_workers,
        collate_fn=collate_training_batch, persistent_workers=config.num_workers > 0,
    )
    steps_per_epoch = len(sampler)
    out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress or rank != 0)
        for step, (images, labels, indices, batch_targets) in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            lr = learning_rate(config.optim, base_lr, global_step, steps_per_epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = normalise_images(images.to(device))
            labels, indices, batch_targets = labels.to(device), indices.to(device), batch_targets.to(device)
            embeddings, terms = trained(images, labels, batch_targets, indices, epoch + step / steps_per_epoch)
            loss = sum(terms.values())
            if not math.isfinite(loss.item()):
                raise FacekdError(non_finite_loss_message(dataset, terms, batch_targets, indices, epoch, step, global_step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad_norm)
            optimizer.step()
            weight_norm = nn.utils.get_total_norm(model.parameters())  # NaN, or inf once a weight passes ~1e19
            if not torch.isfinite(weight_norm):
                raise FacekdError(
                    f"the weights diverged in the update of epoch {epoch + 1}, step {step} (their norm became "
                    f"{weight_norm.item()}; loss {loss.item():.4g} on finite inputs, learning rate {lr:.3g}); "
                    "lower optim.lr. Nothing of this epoch was saved"
                )
            if model.distiller is not None:
                model.distiller.remember(embeddings.detach(), batch_targets, labels, indices)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            if step % 10 == 0:
                elapsed = time.perf_counter() - started
                bar.set_postfix(
                    {name: f"{value / (step + 1):.3f}" for name, value in sums.items()}
                    | {"img/s": f"{(step + 1) * config.batch_size / elapsed:.0f}", "lr": f"{lr:.3g}"}
                )
        bar.close()
        seconds = time.perf_counter() - started
        history.append(
            {"epoch": epoch + 1, "lr": lr, "samples_per_second": steps_per_epoch * config.batch_size / seconds}
            | {name: value / steps_per_epoch for name, value in sums.items()}
        )
        if rank == 0:
            save_checkpoint(
                {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng_state": torch.get_rng_state(), "history": history, "world_size": world_size,
                    "run_fingerprint": fingerprint, "config": asdict(config),
                },
                checkpoint_path,
            )
            _write_log(history, out_dir / LOG)
        if world_size > 1:
            dist.barrier()
    metrics = {
        "epochs": config.epochs,
        "world_size": world_size,
        "global_batch_size": config.batch_size,
        "base_lr_per_512": config.optim.lr,
        "scaled_lr": base_lr,
        "seed": config.seed,
        "final": history[-1] if history else {},
        "samples_per_second": float(np.mean([h["samples_per_second"] for h in history])),
    }
    if rank == 0:
        _write_log(history, out_dir / LOG)  # also when resuming a finished run: DVC removed the old log
        # A fresh, uncompiled copy of the backbone is what gets exported.
        backbone = build_backbone(config.backbone, config.embedding_dim, input_size, config.width).to(device)
        backbone.load_state_dict(model.backbone.state_dict())
        export_onnx(backbone, out_dir / MODEL, input_size)  # checked before it appears under its name
        write_text_atomically(out_dir / METRICS, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return TrainResult(out_dir, start_epoch, metrics)


def _write_log(history: list[dict[str, float]], path: Path) -> None:
    columns = sorted({name for row in history for name in row} - {"epoch"})
    with written_atomically(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["epoch", *columns])
        writer.writeheader()
        writer.writerows(history)
