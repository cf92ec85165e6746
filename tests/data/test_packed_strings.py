"""PackedStrings behaves as the list of keys it replaces, and datasets pickle to workers as arrays."""
from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.packed_strings import PackedStrings

KEYS = ["person01/001.jpg", "", "ünïcödé/☺.png", "person02/a b.jpg"]


def test_reads_back_as_the_list_it_was_made_from() -> None:
    packed = PackedStrings(KEYS)
    assert len(packed) == len(KEYS) and list(packed) == KEYS and packed == KEYS and KEYS == packed
    assert [packed[index] for index in range(-len(KEYS), len(KEYS))] == KEYS + KEYS
    assert packed[np.int64(2)] == KEYS[2] and packed[1:3] == KEYS[1:3] and packed[::-1] == KEYS[::-1]
    assert packed.index("person02/a b.jpg") == 3 and "" in packed and "missing" not in packed
    assert packed != KEYS[:-1] and packed != ["x"] * len(KEYS) and packed != "person01/001.jpg"
    for outside in (len(KEYS), -len(KEYS) - 1):
        with pytest.raises(IndexError, match=f"key index {outside} out of range for 4 keys"):
            packed[outside]
    assert list(PackedStrings([])) == [] and len(PackedStrings([])) == 0
    assert pickle.loads(pickle.dumps(packed)) == KEYS


def unpickled_bytes(pickled: bytes) -> tuple[object, int]:
    """The object in `pickled` and the bytes Python allocated to hold it."""
    tracemalloc.start()
    try:
        loaded = pickle.loads(pickled)
        return loaded, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_dataset_reaches_a_worker_as_arrays_not_as_an_object_per_image(tmp_path: Path) -> None:
    """What a dask worker holds after unpickling the dataset: the keys' bytes and an int64 offset, label
    and file size an image; a list of keys alone costs more (a string object and a pointer per key)."""
    for identity in range(20):
        folder = tmp_path / f"identity{identity:03d}"
        folder.mkdir()
        for image in range(100):
            (folder / f"{image:05d}.jpg").write_bytes(b"not decoded when listing")
    dataset = ImageFolderDataset(tmp_path)
    bound = sum(len(key.encode()) for key in dataset.keys) + 3 * 8 * len(dataset) + 16384
    copy, held = unpickled_bytes(pickle.dumps(dataset))
    _, held_as_list = unpickled_bytes(pickle.dumps(list(dataset.keys)))
    assert held < bound < held_as_list
    assert copy.keys == dataset.keys and copy.fingerprint() == dataset.fingerprint() and copy.source(7) == dataset.source(7)
