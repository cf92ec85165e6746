"""Image-folder datasets: `root/<identity>/<image>`, one sub-folder per identity."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.data.dataset import FaceDataset, KeyedImages
from pipeline.data.packed_strings import PackedStrings
from pipeline.errors import FacekdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def packed_keys(root: Path, keys: list[str]) -> PackedStrings:
    """The keys as `PackedStrings`; a folder or file name that is not UTF-8 (the OS hands it over surrogate-escaped)
    is refused by name, since the keys are stored as UTF-8 text."""
    try:
        return PackedStrings(keys)
    except UnicodeEncodeError:
        for key in keys:
            try:
                key.encode()
            except UnicodeEncodeError:
                raise FacekdError(
                    f"{root}: {os.fsencode(key)!r} is not a UTF-8 file or folder name; facekd keeps image keys as UTF-8 "
                    "text: rename it"
                ) from None
        raise


class ImageFolderDataset(FaceDataset):
    """Identities are the sorted sub-folder names; keys are `identity/file` paths.

    Files are listed once, sorted, so indices and keys are stable across machines.
    """

    kind = "image_folder"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = existing_root(root)
        self.identity_names = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        keys: list[str] = []
        labels: list[int] = []
        sizes: list[int] = []
        for label, identity in enumerate(self.identity_names):
            files = sorted(
                (entry.name, entry.stat().st_size)
                for entry in os.scandir(self.root / identity)
                if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
            )
            for name, size in files:
                keys.append(f"{identity}/{name}")
                labels.append(label)
                sizes.append(size)
        if not keys:
            raise FacekdError(
                f"{self.root}: no images found (expected <identity>/<image> with suffix in {', '.join(IMAGE_SUFFIXES)})"
            )
        self.keys = packed_keys(self.root, keys)  # arrays, not lists: the dataset is pickled to every dask worker
        self.labels = np.asarray(labels, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)

    def path(self, index: int) -> Path:
        return self.root / self.keys[index]

    def read_bytes(self, index: int) -> bytes:
        return self.path(index).read_bytes()

    def source(self, index: int) -> str:
        return str(self.path(index))

    def fingerprint_items(self) -> list[bytes]:
        return [str(size).encode() for size in self._sizes.tolist()]


class ImageFolderImages(KeyedImages):
    """Images of an image folder by key (`identity/file`): `root / key`, nothing listed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = existing_root(root)

    def path(self, key: str) -> Path:
        """`root / key`, which must be a file; refuses a key that is not `<identity>/<file>` (it could
        reach outside the root)."""
        parts = PurePosixPath(key).parts
        if len(parts) != 2 or any(part in (".", "..") or "\\" in part for part in parts):
            raise FacekdError(f"{self.root}: key {key!r} is not '<identity>/<file>' inside the dataset folder")
        path = self.root / key
        if not path.is_file():
            raise FacekdError(f"{path}: image not found (key {key!r} under the dataset folder {self.root})")
        return path

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def source(self, key: str) -> str:
        return str(self.path(key))


def existing_root(root: str | os.PathLike[str]) -> Path:
    """`root` made absolute (dask workers may run in another directory); refused unless it is a folder."""
    path = Path(root).resolve()
    if not path.is_dir():
        raise FacekdError(f"{path}: dataset folder does not exist (expected one sub-folder per identity)")
    return path
