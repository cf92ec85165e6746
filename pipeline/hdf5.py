"""Writing HDF5 outputs (kNN file, pair table) so that only a complete, verified file is published,
and opening any facekd HDF5 output (those two, the embedding store) for reading.

The file is written under a temporary name without HDF5's chunk cache, so a failed write (full
disk, file-size limit, I/O error) fails at the write call instead of later, while HDF5 frees a
cached chunk (where it can crash the process). The writer feeds each dataset's rows to a
`ColumnsChecksum`; the checksum is recorded as an attribute, the closed file is read back and
checked against it, and only then synced and renamed into place. Readers open a file with
`open_output` and check its checksum with `verify_columns` before they trust the whole file.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py

from pipeline.checksums import ColumnsChecksum
from pipeline.errors import FacekdError
from pipeline.files import storage_error, written_atomically

CHECKSUM_ATTRIBUTE = "content_blake2b"  # the attribute holding an output's content checksum


def open_output(
    path: Path, kind: str, datasets: tuple[str, ...], attributes: tuple[str, ...] = (), *, remedy: str
) -> h5py.File:
    """Open an HDF5 output for reading, refusing one that is absent, not HDF5 or not a `kind`.

    Every refusal is a FacekdError naming the file, what was expected of it, and `remedy`.
    """
    if not path.is_file():
        raise FacekdError(f"{path}: {kind} not found; {remedy}")
    try:
        h5file = h5py.File(path, "r")
    except OSError as error:
        raise FacekdError(f"{path}: not a readable HDF5 file ({error}); {remedy}") from None
    missing_datasets = [name for name in datasets if name not in h5file]
    missing_attributes = [name for name in attributes if name not in h5file.attrs]
    if missing_datasets or missing_attributes:
        h5file.close()
        missing = [
            f"missing {what}: {', '.join(names)}"
            for what, names in (("datasets", missing_datasets), ("attributes", missing_attributes)) if names
        ]
        raise FacekdError(f"{path}: not a facekd {kind} ({'; '.join(missing)}); {remedy}")
    return h5file


def recorded_checksum(h5file: h5py.File) -> str | None:
    """The checksum an HDF5 output recorded when it was published (None: none recorded)."""
    value = h5file.attrs.get(CHECKSUM_ATTRIBUTE)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read_columns_checksum(h5file: h5py.File, names: tuple[str, ...], block_rows: int = 1 << 20) -> str:
    """The `ColumnsChecksum` of some datasets of an HDF5 file, read block by block."""
    checksum = ColumnsChecksum(names)
    for name in names:
        dataset = h5file[name]
        for start in range(0, len(dataset), block_rows):
            checksum.update(name, dataset[start : start + block_rows])
    return checksum.hexdigest()


def verify_columns(h5file: h5py.File, path: Path, names: tuple[str, ...], remedy: str) -> None:
    """Refuse a file whose datasets no longer match the checksum recorded when it was published."""
    recorded = recorded_checksum(h5file)
    if recorded is None:
        raise FacekdError(f"{path}: has no content checksum (written by an older facekd); {remedy}")
    try:
        found = read_columns_checksum(h5file, names)
    except OSError as error:
        raise FacekdError(f"{path}: unreadable ({str(error).splitlines()[0]}); {remedy}") from None
    if found != recorded:
        raise FacekdError(f"{path}: content does not match its checksum {recorded} (the file is damaged); {remedy}")


@contextmanager
def written_hdf5(path: Path, checksum_names: tuple[str, ...]) -> Iterator[tuple[h5py.File, ColumnsChecksum]]:
    """Yield a new HDF5 file under a temporary name and the checksum of `checksum_names` to feed while writing.

    On success the checksum is recorded, the file is closed, read back and verified, then
    published at `path`; on failure the temporary file is removed and `path` is left as it was.
    """
    with written_atomically(path) as temporary:
        h5file = h5py.File(temporary, "w", libver="earliest", rdcc_nbytes=0)
        checksum = ColumnsChecksum(checksum_names)
        try:
            yield h5file, checksum
            h5file.attrs[CHECKSUM_ATTRIBUTE] = checksum.hexdigest()
            h5file.close()
        except RuntimeError as error:  # h5py raises RuntimeError for some failed writes at close
            _close_after_failure(h5file)
            raise storage_error(path, error, f"{path.name} was left as it was") from None
        except BaseException:
            _close_after_failure(h5file)
            raise
        with h5py.File(temporary, "r") as written:
            verify_columns(written, temporary, checksum_names, "the storage returned other bytes than were written")


def _close_after_failure(h5file: h5py.File) -> None:
    """Close a file whose writing failed; a second error from flushing it again says nothing new."""
    try:
        h5file.close()
    except (OSError, RuntimeError):
        pass
