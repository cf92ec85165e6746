from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import FacekdError, ProvenanceMismatchError
from pipeline.stage_one.store import EmbeddingStore, StoreWriter, journal_path, partial_path, store_is_complete_for

PROVENANCE = {
    "teacher_sha256": "a" * 64,
    "input_spec": {"name": "input", "layout": "NCHW", "height": 32, "width": 32, "element_type": "float32"},
    "preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5},
    "resize": False,
    "dataset_kind": "image_folder",
    "dataset_fingerprint": "f" * 64,
    "num_images": 10,
}
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
KEYS = [f"id{label}/{i}.jpg" for i, label in enumerate(LABELS)]


def _block(writer: StoreWriter, block: int, dim: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start, stop = writer.layout.bounds(block)
    embeddings = np.arange(start * 2 * dim, stop * 2 * dim, dtype=np.float32).reshape(-1, 2, dim) / 7.0
    return embeddings.astype(np.float16), np.linalg.norm(embeddings, axis=2), np.zeros(stop - start, np.uint8)


def _writer(path: Path, provenance: dict = PROVENANCE) -> StoreWriter:
    return StoreWriter(path, provenance, LABELS, KEYS, ["id0", "id1", "id2"], embedding_dim=4, block_size=3, embedding_dtype="float16")


def _write_all(path: Path, order: list[int]) -> None:
    writer = _writer(path)
    for block in order:
        writer.write_block(block, *_block(writer, block))
    writer.finalize()


def test_store_round_trip_and_schema(tmp_path: Path) -> None:
    _write_all(tmp_path / "s.h5", [0, 1, 2, 3])
    with EmbeddingStore(tmp_path / "s.h5") as store:
        assert len(store) == 10 and store.embedding_dim == 4
        assert store.keys == KEYS and store.identity_names == ["id0", "id1", "id2"]
        np.testing.assert_array_equal(store.labels, LABELS)
        embeddings = store.read_embeddings()
        assert embeddings.dtype == np.float16 and embeddings.shape == (10, 2, 4)
        np.testing.assert_array_equal(embeddings[4], _block(_writer(tmp_path / "other.h5"), 1)[0][1])
        assert store.provenance["input_spec"] == PROVENANCE["input_spec"]
        assert store.provenance["embedding_dtype"] == "float16"
        assert store.file["embeddings"].chunks == (3, 2, 4)
    assert not partial_path(tmp_path / "s.h5").exists() and not journal_path(tmp_path / "s.h5").exists()


def test_write_order_does_not_change_the_bytes(tmp_path: Path) -> None:
    _write_all(tmp_path / "in_order.h5", [0, 1, 2, 3])
    _write_all(tmp_path / "shuffled.h5", [2, 0, 3, 1])
    assert (tmp_path / "shuffled.h5").read_bytes() == (tmp_path / "in_order.h5").read_bytes()


def test_torn_journal_line_is_not_a_finished_block(tmp_path: Path) -> None:
    crashed = tmp_path / "crashed.h5"
    writer = _writer(crashed)
    for block in (3, 1):
        writer.write_block(block, *_block(writer, block))
    writer.close()  # stands in for a crash: the partial store and its journal stay
    with open(journal_path(crashed), "a") as journal:
        journal.write("2")  # the crash cut this line before its newline
    resumed = _writer(crashed)
    assert resumed.resumed_blocks == {1, 3} and resumed.pending_blocks == [0, 2]
    resumed.close()


def test_resume_after_crash_is_byte_identical(tmp_path: Path) -> None:
    _write_all(tmp_path / "reference.h5", [0, 1, 2, 3])
    crashed = tmp_path / "crashed.h5"
    writer = _writer(crashed)
    writer.write_block(1, *_block(writer, 1))
    writer.close()
    resumed = _writer(crashed)
    assert resumed.resumed_blocks == {1} and resumed.pending_blocks == [0, 2, 3]
    for block in resumed.pending_blocks:
        resumed.write_block(block, *_block(resumed, block))
    resumed.finalize()
    assert crashed.read_bytes() == (tmp_path / "reference.h5").read_bytes()


def test_partial_store_never_looks_complete(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    writer = _writer(path)
    writer.write_block(0, *_block(writer, 0))
    with pytest.raises(FacekdError, match="3 blocks are not written yet"):
        writer.finalize()
    writer.close()
    assert not path.exists()
    with pytest.raises(FacekdError, match="a partial store exists: rerun `facekd embed`"):
        EmbeddingStore(path)
    assert not store_is_complete_for(path, PROVENANCE)


def test_partial_store_of_other_inputs_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    writer = _writer(path, dict(PROVENANCE, teacher_sha256="b" * 64))
    writer.write_block(0, *_block(writer, 0))
    writer.close()
    fresh = _writer(path)
    assert fresh.resumed_blocks == set() and fresh.pending_blocks == [0, 1, 2, 3]
    fresh.close()


def test_mismatching_provenance_is_refused_with_the_difference(tmp_path: Path) -> None:
    _write_all(tmp_path / "s.h5", [0, 1, 2, 3])
    requested = dict(PROVENANCE, teacher_sha256="b" * 64, dataset_fingerprint="e" * 64)
    with EmbeddingStore(tmp_path / "s.h5") as store:
        store.check_matches(PROVENANCE)
        with pytest.raises(ProvenanceMismatchError) as error:
            store.check_matches(requested)
    message = str(error.value)
    assert "teacher_sha256: store has 'aaaa" in message and "requested 'bbbb" in message
    assert "dataset_fingerprint" in message and "preprocessing" not in message
    assert store_is_complete_for(tmp_path / "s.h5", PROVENANCE)
    assert not store_is_complete_for(tmp_path / "s.h5", requested)


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5file:
        h5file["x"] = [1]
    with pytest.raises(FacekdError, match="other.h5: not a facekd embedding store .missing datasets: embeddings"):
        EmbeddingStore(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(FacekdError, match="text.h5: not a readable HDF5 file"):
        EmbeddingStore(text)


def test_bad_dtype_and_block_size(tmp_path: Path) -> None:
    with pytest.raises(FacekdError, match="embedding dtype is 'int8'; expected one of float16, float32"):
        StoreWriter(tmp_path / "s.h5", PROVENANCE, LABELS, KEYS, ["a"], 4, 3, "int8")
    with pytest.raises(FacekdError, match="block size is 0"):
        StoreWriter(tmp_path / "s.h5", PROVENANCE, LABELS, KEYS, ["a"], 4, 0, "float16")


def test_partial_store_of_another_block_size_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    writer = _writer(path)
    writer.write_block(0, *_block(writer, 0))
    writer.close()
    other = StoreWriter(path, PROVENANCE, LABELS, KEYS, ["id0", "id1", "id2"], embedding_dim=4, block_size=4, embedding_dtype="float16")
    assert other.resumed_blocks == set() and other.pending_blocks == [0, 1, 2]
    other.close()
