"""What each dask worker of `facekd embed` holds for the dataset, before and after issue 14 item 8, same run.

    .venv/bin/python bench/worker_dataset.py [--images 200000] [--dataset PATH]

`facekd embed` pickles the dataset to every worker. Before, its per-image keys, file sizes (image
folder), record numbers and `.idx` offsets (RecordIO) were Python lists and dicts; now they are
arrays (`PackedStrings`, int64). For an image folder of `--images` small files (20 per identity,
named like the synthetic data, 300-319 bytes: sizes above 256 are objects of their own, as real ones are; or the dataset at `--dataset`, an image folder or a `.rec` file),
it prints the bytes pickled and the bytes held after unpickling (tracemalloc) of the dataset as it
is now and of the same dataset with those fields turned back into lists and dicts (the baseline).
"""
from __future__ import annotations

import argparse
import copy
import pickle
import tempfile
import time
import tracemalloc
from pathlib import Path

from pipeline.data.dataset import FaceDataset
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.open import open_dataset
from pipeline.data.recordio import RecordIODataset

IMAGES_PER_IDENTITY = 20


def as_before(dataset: FaceDataset) -> FaceDataset:
    """A copy of `dataset` with its per-image arrays as the Python lists (and dict) they were before."""
    before = copy.copy(dataset)
    before.keys = list(dataset.keys)
    if isinstance(dataset, ImageFolderDataset):
        before._sizes = dataset._sizes.tolist()
    if isinstance(dataset, RecordIODataset):
        before._records = dataset._records.tolist()
        before._offsets = dict(zip(dataset._offsets.records.tolist(), dataset._offsets.offsets.tolist()))
    return before


def pickled_and_held(dataset: FaceDataset) -> tuple[int, int]:
    """Bytes of the pickle a worker receives, and bytes Python holds once the worker has unpickled it."""
    pickled = pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
    tracemalloc.start()
    try:
        copy_on_worker = pickle.loads(pickled)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del copy_on_worker
    return len(pickled), held


def small_image_folder(root: Path, images: int) -> Path:
    """`images` small files in the synthetic data's layout (listing never reads them)."""
    for identity in range(-(-images // IMAGES_PER_IDENTITY)):
        folder = root / f"id{1_000_000 + identity}"
        folder.mkdir()
        for image in range(min(IMAGES_PER_IDENTITY, images - identity * IMAGES_PER_IDENTITY)):
            (folder / f"{image:04d}.jpg").write_bytes(bytes(300 + image))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000, help="images of the generated image folder")
    parser.add_argument("--dataset", help="an existing image folder or .rec file instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facekd-worker-dataset-") as scratch:
        started = time.perf_counter()
        root = Path(args.dataset) if args.dataset else small_image_folder(Path(scratch), args.images)
        dataset = open_dataset(str(root))
        print(f"{root}: {len(dataset):,} images of {dataset.num_identities:,} identities ({dataset.kind}), "
              f"opened in {time.perf_counter() - started:.1f} s")
        before, after = pickled_and_held(as_before(dataset)), pickled_and_held(dataset)
    print("| dataset fields | pickled (MB) | held on a worker (MB) | held per image (B) |")
    print("|---|---:|---:|---:|")
    for name, (pickled, held) in (("lists (before)", before), ("arrays (now)", after)):
        print(f"| {name} | {pickled / 1e6:.1f} | {held / 1e6:.1f} | {held / len(dataset):.0f} |")
    print(f"held on each worker: {before[1] / after[1]:.2f}x less now")


if __name__ == "__main__":
    main()
