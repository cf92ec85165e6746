"""The common interface of face datasets.

A dataset is an indexed list of samples; each has a stable string key, an integer identity
label and an encoded image. Readers only locate bytes; decoding lives here so every reader
reports an undecodable image the same way, naming where it came from.
"""
from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import CorruptImageError


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # H x W x 3, uint8, RGB
    label: int
    key: str


class FaceDataset(ABC):
    """Indexed face images with identity labels.

    Subclasses set `keys` (unique, stable across runs), `labels` (int64, 0..num_identities-1)
    and `identity_names`, and implement `read_bytes` and `source`.
    """

    keys: Sequence[str]  # a list, or PackedStrings for a large dataset
    labels: np.ndarray
    identity_names: list[str]

    @property
    @abstractmethod
    def kind(self) -> str:
        """Short name of the reader, recorded in provenance (e.g. "image_folder")."""

    @abstractmethod
    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample `index`."""

    @abstractmethod
    def source(self, index: int) -> str:
        """Where sample `index` lives, for error messages (a path, or file + record)."""

    @abstractmethod
    def fingerprint_items(self) -> list[bytes]:
        """Cheap per-sample byte strings (file size, record extent) that change with most content edits.

        Reading every image to hash it would cost a full pass over the data; an edit that keeps a
        file's size exactly is therefore not detected.
        """

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_identities(self) -> int:
        return len(self.identity_names)

    def load(self, index: int) -> np.ndarray:
        """Decode sample `index` to an H x W x 3 uint8 RGB array."""
        return decode_image(self.read_bytes(index), self.source(index))

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.load(index), int(self.labels[index]), self.keys[index])

    def fingerprint(self) -> str:
        """sha256 over the reader kind, the sample keys, labels and per-sample items."""
        digest = hashlib.sha256(f"{self.kind}\0{len(self)}\0".encode())
        for key, label, item in zip(self.keys, self.labels.tolist(), self.fingerprint_items()):
            digest.update(key.encode() + b"\0" + str(label).encode() + b"\0" + item + b"\n")
        return digest.hexdigest()


class KeyedImages(ABC):
    """A dataset's images found by key alone, without listing the dataset: showing a handful of a
    million images should not cost a pass over them."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The encoded image with `key`; a key that is not in the dataset is refused, naming where it looked."""

    @abstractmethod
    def source(self, key: str) -> str:
        """Where the image with `key` lives (a path, or file + record)."""

    def load(self, key: str) -> np.ndarray:
        """Decode the image with `key` to an H x W x 3 uint8 RGB array."""
        return decode_image(self.read_bytes(key), self.source(key))


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to RGB uint8; a failure names `source`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:  # its message names only the in-memory buffer
        raise CorruptImageError(
            f"{source}: cannot decode image (not a known image format; {len(data)} bytes starting {data[:8]!r})"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(f"{source}: cannot decode image ({error})") from None
