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
import time
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass
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
from pipeline.stage_two.config import IMAGES_MEMORY_BYTES, TrainConfig
from pipeline.stage_two.distributed import init_distributed, norm_over_ranks
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer, opened_atomically, write_text_atomically
from pipeline.source_closure import import_closure
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import export_onnx
from pipeline.stage_two.sampler import PairBatchSampler, RandomBatchSampler
from pipeline.stage_two.schedule import learning_rate
from pipeline.stage_two.student import StudentModel
from pipeline.stage_two.training_data import TeacherTargets, TrainingImages, decode_in_memory, normalise_images
from pipeline.stage_two.training_state import gathered_state, load_state

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.onnx"
LOG = "train_log.csv"
METRICS = "train_metrics.json"


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    resumed_from_epoch: int
    metrics: dict[str, Any]


def run_fingerprint(
    config: TrainConfig,
    dataset: FaceDataset,
    targets: TeacherTargets | None,
    pair_offsets: np.ndarray | None,
    pair_partners: np.ndarray | None,
) -> str:
    """Settings + training code + the data a run learns from.

    A kept checkpoint (DVC `persist`) is resumed only when all of them are unchanged: after new
    settings, a change to the code the training loop runs (its import closure; code it never runs,
    e.g. mining or evaluation, does not count), a new teacher pass, new images or new mined pairs,
    it must not pass for the new run's result.
    """
    digest = hashlib.sha256(config.fingerprint().encode())
    for source in import_closure(__name__):
        digest.update(source.read_bytes())
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
    images_memory_bytes: int = IMAGES_MEMORY_BYTES,
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
    rank, world_size, device = init_distributed()
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
    model = StudentModel(
        config, input_size, dataset.num_identities, targets.dim if targets else None, rank, world_size
    ).to(device)
    sharded_names = model.sharded_parameter_names()
    replicated, sharded = _replicated_and_sharded(model)
    # Checked for divergence after each update; a sampling head's C x D centres change only where
    # sampled, so its step centres are checked instead (a pass over all C x D a step grows with C).
    checked_replicated, checked_sharded = _replicated_and_sharded(model, leave_out=model.sampled_parameter_names())
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
            load_state(model, optimizer, checkpoint["model"], checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["rng_state"])
            start_epoch, history = checkpoint["epoch"], checkpoint["history"]
            if rank == 0:
                log.info("resuming %s from epoch %d", out_dir, start_epoch)
        elif rank == 0:
            log.warning("%s was made with other settings, data, code or world size; training from scratch", checkpoint_path)
    if config.compile:
        model.backbone.compile()
    if world_size > 1:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sharded_names)
        if rank == 0 and sharded_names:
            log.info("margin head: %d class centres sharded over %d ranks", dataset.num_identities, world_size)
    trained = model if world_size == 1 else DistributedDataParallel(model, forward_sync_buffers=False)
    images = decode_in_memory(dataset, usable, images_memory_bytes, progress and rank == 0)
    if images is None and config.num_workers == 0 and rank == 0:
        log.warning(
            "the training images do not fit in images_memory_gb once decoded: each step reads and decodes its batch "
            "first; num_workers >= 1 does that for the next batches while the step runs"
        )
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
            centres = model.sampled_centres()  # Partial FC: this step's centres, updated in place below
            if config.optim.clip_grad_norm > 0:
                gradient_norm = norm_over_ranks(*_gradients(*_with_centres(model, replicated, sharded, centres)))
                nn.utils.clip_grads_with_norm_([*model.parameters(), *centres], config.optim.clip_grad_norm, gradient_norm)
            optimizer.step()
            model.update_sampled_centres(lr, config.optim.momentum, config.optim.weight_decay)
            # NaN, or inf once a weight passes ~1e19
            weight_norm = norm_over_ranks(*_with_centres(model, checked_replicated, checked_sharded, centres))
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
        model_state, optimizer_state = gathered_state(model, optimizer)
        if rank == 0:
            save_checkpoint(
                {
                    "epoch": epoch + 1, "model": model_state, "optimizer": optimizer_state,
                    "rng_state": torch.get_rng_state(), "history": history, "world_size": world_size,
                    "run_fingerprint": fingerprint, "config": config.model_dump(),
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
        # Every rank tears down together, DDP's reducer first: a process group destroyed while
        # another rank has already left was seen to hang in gloo's destructor.
        dist.barrier()
        del trained
        dist.destroy_process_group()
    return TrainResult(out_dir, start_epoch, metrics)


def _replicated_and_sharded(
    model: StudentModel, leave_out: Collection[str] = ()
) -> tuple[list[Tensor], list[Tensor]]:
    """The model's parameters, but those named in `leave_out`: (replicated on every rank, sharded over ranks)."""
    sharded_names = model.sharded_parameter_names()
    kept = [(name, parameter) for name, parameter in model.named_parameters() if name not in leave_out]
    return ([parameter for name, parameter in kept if name not in sharded_names],
            [parameter for name, parameter in kept if name in sharded_names])


def _with_centres(
    model: StudentModel, replicated: list[Tensor], sharded: list[Tensor], centres: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """`replicated` and `sharded` with a sampling head's step `centres` added where its weight belongs,
    for norms over every rank: the sharded ones when each rank holds its own centres."""
    if model.sharded_parameter_names():
        return replicated, sharded + centres
    return replicated + centres, sharded


def _gradients(*groups: list[Tensor]) -> tuple[list[Tensor], ...]:
    """The gradients of each group of tensors (those that have one)."""
    return tuple([tensor.grad for tensor in group if tensor.grad is not None] for group in groups)


def _write_log(history: list[dict[str, float]], path: Path) -> None:
    columns = sorted({name for row in history for name in row} - {"epoch"})
    with opened_atomically(path, newline="") as stream:
        writer = csv.DictWriter(stream, ["epoch", *columns])
        writer.writeheader()
        writer.writerows(history)
