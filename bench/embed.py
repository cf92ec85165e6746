"""Benchmark of stage one (facekd embed), with its baselines measured in the same run.

  python bench/embed.py [--images 6000]

Reports, for the default teacher network (params.yaml's `teacher` backbone and width, 64 px):
  1. network throughput on decoded images, image + flip, one thread:
     ONNX Runtime (what stage one runs) vs PyTorch eager on the same weights;
  2. the whole stage (decode + embed + write) in-process, and the share of it spent writing HDF5;
  3. the stage on a dask LocalCluster of 1 and of 2 single-threaded workers (cluster start-up
     excluded: the cluster is started first and passed as a scheduler address).
The network is randomly initialised (the speed does not depend on the weights), so PyTorch and
ONNX Runtime run exactly the same network.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.synth import generate_split
from pipeline.stage_one.config import EmbedConfig
from pipeline.stage_two.config import TeacherSection
from pipeline.stage_one.embed import embed_dataset
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import export_onnx
from pipeline.face_model import OnnxFaceModel

BATCH = 128


def best_of(runs: int, function) -> float:
    """Shortest wall time of `runs` calls (the least disturbed by other load)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def network_throughput(onnx_path: Path, model: torch.nn.Module, images: np.ndarray) -> tuple[float, float]:
    """images/s (each image and its flip) of ONNX Runtime and of PyTorch eager, one thread each."""
    torch.set_num_threads(1)
    teacher = OnnxFaceModel(onnx_path, threads=1, batch_size=BATCH)
    both = np.concatenate([images, images[:, :, ::-1]])

    def run_onnx() -> None:
        teacher.embed_with_flip(images)

    def run_torch() -> None:
        with torch.no_grad():
            pixels = torch.from_numpy(((both.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
            for start in range(0, len(pixels), BATCH):
                model(pixels[start : start + BATCH])

    run_onnx(), run_torch()  # warm-up
    return len(images) / best_of(3, run_onnx), len(images) / best_of(3, run_torch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        identities = args.images // 20
        print(f"generating {identities * 20} synthetic 64 px images ...", flush=True)
        generate_split(scratch / "faces", range(identities), 20, 64, seed=0, workers=2, progress=False)
        generate_split(scratch / "warm", range(4), 4, 64, seed=1, workers=1, progress=False)
        dataset, warm_up = ImageFolderDataset(scratch / "faces"), ImageFolderDataset(scratch / "warm")
        teacher = TeacherSection()
        model = build_backbone(teacher.backbone, 512, 64, teacher.width).eval()
        onnx_path = scratch / "teacher.onnx"
        export_onnx(model, onnx_path, 64)

        sample = np.stack([dataset.load(i) for i in range(min(1024, len(dataset)))])
        onnx_rate, torch_rate = network_throughput(onnx_path, model, sample)

        def settings(store: Path, images_per_block: int = 512) -> EmbedConfig:
            """Single-threaded sessions on dask workers (the in-process run uses every thread)."""
            return EmbedConfig(teacher=str(onnx_path), store=str(store), workers=0, threads_per_worker=1,
                               batch_size=BATCH, images_per_block=images_per_block)

        started = time.perf_counter()
        in_process = embed_dataset(dataset, settings(scratch / "s0.h5"), dataset_root="", scheduler=None, progress=False)
        in_process_seconds = time.perf_counter() - started

        from distributed import Client, LocalCluster

        cluster_rates = {}
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
                store = scratch / f"s{workers}w.h5"
                # open each worker's session on a tiny store first, so start-up is not timed
                embed_dataset(warm_up, settings(scratch / f"warm{workers}.h5", images_per_block=2), dataset_root="",
                              scheduler=cluster.scheduler_address, progress=False)
                started = time.perf_counter()
                embed_dataset(dataset, settings(store), dataset_root="", scheduler=cluster.scheduler_address, progress=False)
                cluster_rates[workers] = len(dataset) / (time.perf_counter() - started)

    print()
    print(f"images: {len(dataset)} synthetic 64x64 JPEGs; each embedded with its flip; batch {BATCH}")
    print(f"network, decoded images, 1 thread: ONNX Runtime {onnx_rate:.0f} img/s, PyTorch eager {torch_rate:.0f} img/s "
          f"-> ONNX Runtime / PyTorch = {onnx_rate / torch_rate:.2f}x")
    print(f"stage in-process (decode + embed + write), ONNX Runtime all threads: {len(dataset) / in_process_seconds:.0f} img/s; "
          f"writing HDF5 {in_process.write_seconds:.3f} s = {100 * in_process.write_seconds / in_process_seconds:.2f}% of the stage")
    print(f"dask LocalCluster, single-threaded workers: 1 worker {cluster_rates[1]:.0f} img/s, "
          f"2 workers {cluster_rates[2]:.0f} img/s -> speed-up {cluster_rates[2] / cluster_rates[1]:.2f}x")


if __name__ == "__main__":
    main()
