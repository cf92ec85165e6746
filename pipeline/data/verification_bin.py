"""Verification pair sets: insightface `.bin` files, pair lists over image folders, and making new ones.

A `.bin` is a pickle of `(images, issame)`: 2N encoded images and N same/not-same flags; pair k is
images 2k and 2k+1. Pickles can run code when loaded, so they are read with an unpickler that
resolves no globals except a few harmless stand-ins (see `_ADMITTED_GLOBALS`).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.dataset import FaceDataset, decode_image
from pipeline.files import opened_atomically
from pipeline.errors import FacekdError


@dataclass
class VerificationPairs:
    """2N encoded images and N flags; pair k is images 2k and 2k+1."""

    images: list[bytes]
    issame: np.ndarray  # N, bool
    name: str  # short name for reports, e.g. "lfw"
    origin: str  # the file the pairs came from, for error messages

    def __len__(self) -> int:
        return len(self.issame)

    def decode(self, index: int) -> np.ndarray:
        """Image `index` (0..2N-1) as H x W x 3 uint8 RGB."""
        return decode_image(self.images[index], f"{self.origin}: image {index} (pair {index // 2})")


class _Refused(pickle.UnpicklingError):
    """A global or numpy dtype that a verification .bin may not name."""


class _NumpyBoolDtype:
    """Stands in for `numpy.dtype("b1")` while unpickling; its pickled state (byte order etc.) does not matter."""

    def __setstate__(self, state: object) -> None:
        pass


def _numpy_dtype(spec: object, align: object = False, copy: object = True) -> _NumpyBoolDtype:
    if spec not in ("b1", b"b1"):
        raise _Refused(f"numpy dtype {spec!r}")
    return _NumpyBoolDtype()


def _numpy_scalar(dtype: object, data: object = None) -> bool:
    if not isinstance(dtype, _NumpyBoolDtype) or data not in (b"\x00", b"\x01"):
        raise pickle.UnpicklingError(f"numpy scalar {data!r} (only numpy bools are admitted)")
    return data == b"\x01"


class _NumpyBoolArray:
    """Stands in for `numpy.ndarray` while unpickling: only a 1-D bool array becomes its `values`."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=bool)

    def __setstate__(self, state: object) -> None:
        # ndarray's pickled state: (version, shape, dtype, is_fortran, raw data)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError(f"numpy array state {state!r:.80} (expected 5 fields)")
        _, shape, dtype, _, data = state
        self.values = _bool_values(data, dtype, shape)


def _bool_values(data: object, dtype: object, shape: object) -> np.ndarray:
    """The flags of a pickled 1-D numpy bool array, checked: one byte, 0 or 1, per flag."""
    if not isinstance(dtype, _NumpyBoolDtype):
        raise pickle.UnpicklingError(f"numpy array of dtype {dtype!r} (only bool arrays are admitted)")
    if not (isinstance(shape, tuple) and len(shape) == 1 and isinstance(shape[0], int)):
        raise pickle.UnpicklingError(f"numpy array of shape {shape!r} (only 1-D bool arrays are admitted)")
    if not isinstance(data, (bytes, bytearray)) or len(data) != shape[0]:
        raise pickle.UnpicklingError(f"numpy bool array data {data!r:.80} (expected {shape[0]} bytes)")
    values = np.frombuffer(data, dtype=np.uint8)
    if (values > 1).any():
        raise pickle.UnpicklingError("numpy bool array holds bytes other than 0 and 1")
    return values.astype(bool)


def _numpy_reconstruct(cls: object, shape: object, typecode: object) -> _NumpyBoolArray:
    """Stands in for `numpy._core.multiarray._reconstruct`: an empty array, filled by its pickled state."""
    if cls is not _NumpyBoolArray or shape != (0,) or typecode != b"b":
        raise pickle.UnpicklingError(f"numpy _reconstruct{(cls, shape, typecode)!r} (only plain arrays are admitted)")
    return _NumpyBoolArray()


def _numpy_frombuffer(data: object, dtype: object, shape: object, order: object) -> _NumpyBoolArray:
    """Stands in for `numpy._core.numeric._frombuffer` (numpy's pickle protocol 5)."""
    array = _NumpyBoolArray()
    array.values = _bool_values(data, dtype, shape)
    return array


def _latin1_bytes(text: object, encoding: object) -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode({type(text).__name__}, {encoding!r}) (only latin1 text is admitted)"
        )
    return text.encode("latin1")


# The only globals a .bin may name. Real files hold issame flags as numpy bools or a numpy bool array
# (pickled by numpy 1.x from `numpy.core`, by numpy 2 from `numpy._core`), and Python 3 pickles written
# with protocol 2 spell bytes as `_codecs.encode(text, "latin1")`. Each stand-in checks its arguments
# and can build nothing but a bool, a 1-D bool array or bytes.
_ADMITTED_GLOBALS = {
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NumpyBoolArray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


class _SafeUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes build themselves (bytes, str, lists, tuples, bools, ints, ...)."""

    def __init__(self, file) -> None:
        # Python 2 wrote images as `str`; encoding="bytes" turns them into bytes rather than failing.
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str):
        stand_in = _ADMITTED_GLOBALS.get((module, name))
        if stand_in is None:
            raise _Refused(f"global {module}.{name}")
        return stand_in


def load_bin(path: str | os.PathLike[str]) -> VerificationPairs:
    """Read an insightface verification `.bin` (e.g. lfw.bin) without running code from it."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            content = _SafeUnpickler(file).load()
    except OSError as error:
        raise FacekdError(f"{path}: cannot read verification .bin ({error.strerror})") from None
    except _Refused as error:
        raise FacekdError(
            f"{path}: refused to load {error} (a verification .bin may hold only bytes, lists, tuples, bools and "
            "1-D numpy bool arrays; this file is not one, and loading it could run code)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, OverflowError) as error:
        raise FacekdError(f"{path}: not a readable verification .bin pickle ({error})") from None
    images, issame = _check_layout(content, path)
    return VerificationPairs(images, issame, path.stem, str(path))


def _check_layout(content: object, path: Path) -> tuple[list[bytes], np.ndarray]:
    if not (isinstance(content, (tuple, list)) and len(content) == 2 and isinstance(content[0], (tuple, list))
            and isinstance(content[1], (tuple, list, _NumpyBoolArray))):
        raise FacekdError(f"{path}: expected a pickled pair (list of encoded images, list of same/not-same bools)")
    images, flags = content
    if isinstance(flags, _NumpyBoolArray):
        flags = flags.values.tolist()
    if len(images) != 2 * len(flags):
        raise FacekdError(
            f"{path}: {len(images)} images for {len(flags)} same/not-same flags (expected 2 images per pair)"
        )
    if not flags:
        raise FacekdError(f"{path}: holds no pairs")
    for index, image in enumerate(images):
        if not isinstance(image, bytes):
            raise FacekdError(f"{path}: image {index} is a {type(image).__name__} (expected encoded image bytes)")
    for index, flag in enumerate(flags):
        if not (isinstance(flag, int) and flag in (0, 1)):  # bool is an int
            raise FacekdError(f"{path}: same/not-same flag {index} is {flag!r} (expected a bool)")
    return list(images), np.asarray(flags, dtype=bool)


def write_bin(path: str | os.PathLike[str], images: Sequence[bytes], issame: Sequence[bool] | np.ndarray) -> None:
    """Write pairs in insightface's `.bin` layout, atomically (a crash leaves no half-written file)."""
    path = Path(path)
    flags = [bool(flag) for flag in issame]
    if len(images) != 2 * len(flags):
        raise FacekdError(f"{path}: {len(images)} images for {len(flags)} pairs (expected 2 images per pair)")
    if not all(isinstance(image, bytes) for image in images):
        raise FacekdError(f"{path}: every image must be encoded bytes")
    with opened_atomically(path, "wb") as file:
        pickle.dump((list(images), flags), file, protocol=4)


def make_pairs(dataset: FaceDataset, num_pairs: int, seed: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Draw `num_pairs` distinct pairs of distinct images, half same-identity, half not.

    Each half is drawn uniformly from all possible pairs of its kind, without repeats. Same and
    different pairs alternate, so every contiguous evaluation fold of even size is balanced.
    """
    if num_pairs <= 0 or num_pairs % 2:
        raise FacekdError(f"num_pairs: {num_pairs} (expected a positive even number, half same and half different)")
    labels = np.asarray(dataset.labels)
    order = np.argsort(labels, kind="stable")  # indices grouped by identity
    identities, group_starts, group_sizes = np.unique(labels[order], return_index=True, return_counts=True)
    same_per_identity = group_sizes * (group_sizes - 1) // 2
    num_images = len(labels)
    possible = {
        "same": int(same_per_identity.sum()),
        "different": (num_images * (num_images - 1) - int((group_sizes * (group_sizes - 1)).sum())) // 2,
    }
    for kind, count in possible.items():
        if count < num_pairs // 2:
            raise FacekdError(
                f"num_pairs: {num_pairs} needs {num_pairs // 2} {kind}-identity pairs, but the dataset allows only "
                f"{count} ({len(identities)} identities, {num_images} images)"
            )
    rng = np.random.default_rng(seed)
    group_of = np.searchsorted(identities, labels)

    def draw_same(count: int) -> np.ndarray:
        group = rng.choice(len(identities), size=count, p=same_per_identity / possible["same"])
        first = rng.integers(0, group_sizes[group])
        second = rng.integers(0, group_sizes[group] - 1)
        second += second >= first  # skip the first image itself
        return np.stack([order[group_starts[group] + first], order[group_starts[group] + second]], axis=1)

    def draw_different(count: int) -> np.ndarray:
        # First image weighted by how many images lie outside its identity, so pairs come out uniform.
        outside = num_images - group_sizes[group_of]
        first = rng.choice(num_images, size=count, p=outside / outside.sum())
        group = group_of[first]
        second = rng.integers(0, outside[first])
        second += np.where(second >= group_starts[group], group_sizes[group], 0)  # skip the first's identity
        return np.stack([first, order[second]], axis=1)

    same_pairs = _draw_distinct(draw_same, num_pairs // 2)
    different_pairs = _draw_distinct(draw_different, num_pairs // 2)
    pairs = [pair for both in zip(same_pairs, different_pairs) for pair in both]
    issame = np.tile([True, False], num_pairs // 2)
    return pairs, issame


def _draw_distinct(draw, count: int) -> list[tuple[int, int]]:
    """Call `draw(n)` for candidate pairs until `count` pairs are collected, none repeated in either order."""
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        for first, second in draw(2 * (count - len(pairs)) + 16).tolist():
            unordered = (min(first, second), max(first, second))
            if unordered not in seen and len(pairs) < count:
                seen.add(unordered)
                pairs.append((first, second))
    return pairs


def make_bin_from_dataset(dataset: FaceDataset, path: str | os.PathLike[str], num_pairs: int, seed: int) -> None:
    """Write a `.bin` of `num_pairs` pairs drawn from `dataset`, storing each image's original encoded bytes."""
    pairs, issame = make_pairs(dataset, num_pairs, seed)
    images = [dataset.read_bytes(index) for pair in pairs for index in pair]
    write_bin(path, images, issame)


def load_pair_list(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> VerificationPairs:
    """Read a pair list: one `path1 path2 0|1` line per pair (1 = same identity), paths relative to `root`.

    Blank lines are skipped.
    """
    path, root = Path(path), Path(root)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FacekdError(f"{path}: cannot read pair list ({error})") from None
    images: list[bytes] = []
    flags: list[bool] = []
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise FacekdError(f"{path}, line {line_number}: {line!r} (expected 'path1 path2 0|1')")
        for relative in fields[:2]:
            try:
                images.append((root / relative).read_bytes())
            except OSError as error:
                raise FacekdError(
                    f"{path}, line {line_number}: cannot read {root / relative} ({error.strerror})"
                ) from None
        flags.append(fields[2] == "1")
    if not flags:
        raise FacekdError(f"{path}: no pairs (expected lines 'path1 path2 0|1')")
    return VerificationPairs(images, np.asarray(flags, dtype=bool), path.stem, str(path))


def load_pair_set(path: str | os.PathLike[str]) -> VerificationPairs:
    """A `.bin` file (suffix in any case), or a pair list whose image paths are relative to the list's own folder."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return load_bin(path)
    return load_pair_list(path, path.parent)
