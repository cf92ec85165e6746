"""The training data path: decoded images plus the cached teacher embedding of the same view.

A sample is (dataset index, flip). The image is decoded and flipped if asked; its target is the
store's embedding of that view (row 0 = image, row 1 = flip), so the student always learns from
the teacher's embedding of exactly what it sees. The teacher itself is never run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline.data.dataset import FaceDataset
from pipeline.errors import FacekdError
from pipeline.stage_two.config import TARGETS_MEMORY_BYTES, TrainConfig, TrainSection
from pipeline.stage_one.store import provenance_hash, read_provenance

# store rows read at once when checking the targets are finite: 2 views x 512 float16 each, 128 MiB
FINITE_CHECK_ROWS = 65536


class TeacherTargets:
    """Teacher embeddings (N x 2 x D) by (index, view): in memory when they fit, else memory-mapped.

    In-memory targets are read once (float16). Larger stores are memory-mapped: facekd writes the
    embeddings in uncompressed row chunks allocated up front, so every chunk is one contiguous run
    of bytes in the file, and a row is a slice of the mapped file served by the OS page cache, with
    no HDF5 call per sample. Each process (DataLoader workers too) maps the file on first use.
    """

    def __init__(self, store_path: str | Path, memory_budget_bytes: int = TARGETS_MEMORY_BYTES) -> None:
        self.store_path = Path(store_path)
        with h5py.File(self.store_path, "r") as store:
            self.store_hash = provenance_hash(read_provenance(store))
            dataset = store["embeddings"]
            self.shape = dataset.shape
            in_memory = dataset.size * dataset.dtype.itemsize <= memory_budget_bytes
            self.array: np.ndarray | None = dataset[:] if in_memory else None
            if not in_memory:
                self._dtype = dataset.dtype
                self._row_bytes = self.dim * dataset.dtype.itemsize
                self._chunk_rows, self._chunk_offsets = _chunk_file_offsets(dataset, self.store_path)
        self._mapped: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.shape[2])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": None}

    def get(self, index: int, view: int) -> np.ndarray:
        if self.array is not None:
            return self.array[index, view]
        if self._mapped is None:
            self._mapped = np.memmap(self.store_path, dtype=np.uint8, mode="r")
        chunk, row = divmod(index, self._chunk_rows)
        start = int(self._chunk_offsets[chunk]) + (row * 2 + view) * self._row_bytes
        return self._mapped[start:start + self._row_bytes].view(self._dtype)


def _chunk_file_offsets(dataset: h5py.Dataset, path: Path) -> tuple[int, np.ndarray]:
    """Rows per chunk, and each chunk's byte offset in the file, in row order."""
    if (
        dataset.chunks is None
        or dataset.chunks[1:] != dataset.shape[1:]
        or dataset.id.get_create_plist().get_nfilters()
    ):
        raise FacekdError(
            f"{path}: 'embeddings' is not stored in uncompressed row chunks as facekd writes it, so it "
            "cannot be memory-mapped; raise train.targets_memory_gb to read it into memory"
        )
    chunk_rows = dataset.chunks[0]
    offsets = np.full(-(-dataset.shape[0] // chunk_rows), -1, dtype=np.int64)

    def record(chunk: h5py.h5d.StoreInfo) -> None:
        offsets[chunk.chunk_offset[0] // chunk_rows] = chunk.byte_offset

    dataset.id.chunk_iter(record)
    if (offsets < 0).any():
        raise FacekdError(f"{path}: 'embeddings' has chunks that were never written; embed the store again")
    return chunk_rows, offsets


def decode_in_memory(
    dataset: FaceDataset, indices: np.ndarray, memory_budget_bytes: int, progress: bool = False
) -> np.ndarray | None:
    """Images `indices` decoded once into one uint8 array (N x H x W x 3, by dataset index), or None
    when they would not fit in `memory_budget_bytes`.

    Decoding a small JPEG costs about as much as a tenth of a small model's training step on a CPU,
    every epoch; held in memory, it is paid once. Rows outside `indices` (images the teacher could
    not embed) stay zero and are never sampled.
    """
    if len(indices) == 0:
        return None
    first = dataset.load(int(indices[0]))
    if len(dataset) * first.nbytes > memory_budget_bytes:
        return None
    images = np.zeros((len(dataset), *first.shape), dtype=np.uint8)
    for index in tqdm(indices.tolist(), desc="decode images", unit="img", disable=not progress, mininterval=1.0):
        image = dataset.load(index)
        if image.shape != first.shape:
            raise FacekdError(
                f"{dataset.source(index)}: image is {image.shape[1]}x{image.shape[0]}x{image.shape[2]}; "
                f"expected {first.shape[1]}x{first.shape[0]}x{first.shape[2]} like {dataset.source(int(indices[0]))}"
            )
        images[index] = image
    return images


class TrainingImages(Dataset):
    """Items (index, flip) -> (uint8 H x W x 3 image, label, index, flip, teacher target).

    Images come from `images` (see `decode_in_memory`) when given, else are decoded per sample.
    """

    def __init__(
        self, dataset: FaceDataset, targets: TeacherTargets | None = None, images: np.ndarray | None = None
    ) -> None:
        self.dataset = dataset
        self.targets = targets
        self.images = images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int, int, bool, torch.Tensor]:
        index, flip = item
        image = self.images[index] if self.images is not None else self.dataset.load(index)
        if flip:
            image = image[:, ::-1]
        target = (
            torch.from_numpy(self.targets.get(index, int(flip)).astype(np.float32))
            if self.targets is not None else torch.empty(0)
        )
        return torch.from_numpy(image.copy()), int(self.dataset.labels[index]), index, flip, target


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x H x W x 3 -> float B x 3 x H x W, (x - 127.5) / 127.5 as insightface trains."""
    return images.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5).contiguous()


@dataclass
class TrainingInputs:
    """Everything stage two reads besides its settings, checked against each other."""

    dataset: FaceDataset
    usable: np.ndarray  # rows the teacher could embed (not skipped)
    store_hash: str
    targets: TeacherTargets | None = None
    pair_offsets: np.ndarray | None = None
    pair_partners: np.ndarray | None = None

    def train_arguments(self) -> dict[str, object]:
        """Keyword arguments of `pipeline.stage_two.train.train`."""
        return {
            "targets": self.targets, "usable": self.usable,
            "pair_offsets": self.pair_offsets, "pair_partners": self.pair_partners,
        }

    def fingerprint(self) -> str:
        """Identifies the store and pairs (the dataset is checked against the store on loading)."""
        digest = hashlib.sha256(self.store_hash.encode())
        for array in (self.pair_offsets, self.pair_partners):
            if array is not None:
                digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()


def load_training_inputs(
    dataset: FaceDataset,
    store_path: str | Path,
    pairs_path: str | Path | None,
    load_targets: bool = True,
    memory_budget_bytes: int = TARGETS_MEMORY_BYTES,
) -> TrainingInputs:
    """The store's targets and usable rows, and the mined pairs (when `pairs_path` is given).

    Refuses a store built from another dataset, a pair table mined from another store, and
    targets with NaN or infinite rows (an edited or damaged store): training on them would fail
    much later, with a loss that seems to blame the learning rate.
    """
    from pipeline.stage_one.pair_table import PairTable
    from pipeline.stage_one.store import EmbeddingStore, check_finite_rows

    with EmbeddingStore(store_path) as store:
        store.check_matches({"dataset_kind": dataset.kind, "dataset_fingerprint": dataset.fingerprint()})
        if load_targets:
            check_finite_rows(store, FINITE_CHECK_ROWS)
        inputs = TrainingInputs(dataset, np.flatnonzero(~store.skipped), store.provenance_hash)
        if pairs_path is not None:
            with PairTable(pairs_path) as pairs:
                pairs.check_store(store)
                inputs.pair_offsets, inputs.pair_partners = pairs.offsets, pairs.partners()
    if load_targets:
        inputs.targets = TeacherTargets(store_path, memory_budget_bytes)
    return inputs


def load_section_inputs(section: TrainSection, configs: list[TrainConfig]) -> TrainingInputs:
    """The data a training section names, loaded once for all `configs`: the targets only if one
    of them distils, the pairs only if one of them samples pairs."""
    from pipeline.data.open import open_dataset

    return load_training_inputs(
        open_dataset(section.dataset),
        section.store,
        section.pairs if any(config.sampler == "pairs" for config in configs) else None,
        load_targets=any(config.distillation.uses_teacher for config in configs),
        memory_budget_bytes=section.targets_memory_bytes,
    )
