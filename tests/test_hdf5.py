"""Opening facekd's HDF5 outputs: every reader refuses a missing, non-HDF5 or foreign file in one clear line."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import FacekdError
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.pair_table import PairTable
from pipeline.stage_one.store import EmbeddingStore

READERS = [
    (EmbeddingStore, "embedding store", "run `facekd embed`"),
    (lambda path: KnnFile(path, store=None), "kNN file", "run `facekd index`"),
    (PairTable, "pair table", "run `facekd mine`"),
]


@pytest.mark.parametrize(("reader", "kind", "remedy"), READERS)
def test_missing_file_names_the_kind_and_the_command(tmp_path: Path, reader, kind: str, remedy: str) -> None:
    with pytest.raises(FacekdError, match=f"absent.h5: {kind} not found; {remedy}"):
        reader(tmp_path / "absent.h5")


@pytest.mark.parametrize(("reader", "kind", "remedy"), READERS)
def test_non_hdf5_file_is_refused(tmp_path: Path, reader, kind: str, remedy: str) -> None:
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(FacekdError, match=rf"text.h5: not a readable HDF5 file \(.*\); {remedy}"):
        reader(tmp_path / "text.h5")


@pytest.mark.parametrize(("reader", "kind", "remedy"), READERS)
def test_foreign_hdf5_file_lists_what_is_missing(tmp_path: Path, reader, kind: str, remedy: str) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as h5file:
        h5file["something"] = np.zeros(3)
    with pytest.raises(FacekdError, match=rf"other.h5: not a facekd {kind} \(missing datasets: .*\); {remedy}"):
        reader(tmp_path / "other.h5")


def test_missing_attributes_are_named(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "knn.h5", "w") as h5file:
        h5file["neighbours"], h5file["similarities"] = np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32)
        h5file.attrs["k"] = 1
    with pytest.raises(FacekdError, match=r"not a facekd kNN file \(missing attributes: store_provenance_hash, view, factory\)"):
        KnnFile(tmp_path / "knn.h5", store=None)


def test_partial_store_is_pointed_out(tmp_path: Path) -> None:
    (tmp_path / "store.h5.partial").write_bytes(b"")
    with pytest.raises(FacekdError, match="store.h5: embedding store not found; a partial store exists: rerun `facekd embed`"):
        EmbeddingStore(tmp_path / "store.h5")
