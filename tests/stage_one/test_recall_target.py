"""Approximate indexes searched with the nprobe / ef_search that reaches index.recall_target: real FAISS,
a real store of clustered vectors on which one IVF list finds about 0.6 of the exact neighbours."""
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest
import yaml

from pipeline.settings import SettingsError, validate_settings
from pipeline.stage_one.index import IndexMetadata, SearchBreadth, load_index, recall_at_k
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.neighbours import find_neighbours
from pipeline.stage_one.recall_target import EF_SEARCH_LIMIT, breadths_to_try, doublings
from pipeline.stage_one.store import EmbeddingStore
from tests.stage_one.index_mine_cli import index_mine_params, run_cli
from tests.stage_one.stores import clustered_vectors, index_config, write_store

K = 10
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def clustered_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 images of 100 identities in 16-d; with IVF32,Flat, recall@10 is about 0.62 at nprobe 1, 0.96 at 8."""
    vectors, labels = clustered_vectors(100, 20, 16, spread=0.8, seed=0)
    return write_store(tmp_path_factory.mktemp("clustered") / "store.h5", vectors, labels, block_size=500)


def search(store: Path, folder: Path, **settings) -> tuple[np.ndarray, IndexMetadata]:
    """`facekd index`'s search (find_neighbours) with `settings` (IndexConfig keys): the kNN file's neighbours
    and the index's sidecar."""
    folder.mkdir(exist_ok=True)
    config = index_config(folder, store=str(store), knn_k=K, rows_per_search=500, train_sample=2000, recall_queries=400,
                          threads=1, **settings)
    result = find_neighbours(config, settings_file="params.yaml", progress=False)
    with EmbeddingStore(store) as opened, KnnFile(config.knn, opened) as knn:
        return knn.neighbours[:], result.index


def test_nprobe_is_doubled_until_the_recall_target(
    clustered_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exact, flat = search(clustered_store, tmp_path / "flat", factory="Flat")
    assert flat.search_breadth == SearchBreadth(), "an exact index has nothing to tune"
    as_set, untuned = search(clustered_store, tmp_path / "as_set", factory="IVF32,Flat", nprobe=1, recall_target=None)
    assert untuned.search_breadth == SearchBreadth(nprobe=1)
    assert recall_at_k(as_set, exact, K) < 0.7
    with caplog.at_level(logging.INFO, logger="pipeline.stage_one.recall_target"):
        tuned, metadata = search(clustered_store, tmp_path / "tuned", factory="IVF32,Flat", nprobe=1)
    assert metadata.nprobe in (8, 16) and metadata.recall >= 0.95 and metadata.recall_queries == 400
    assert recall_at_k(tuned, exact, K) >= 0.95
    assert f"searched with nprobe {metadata.nprobe}: recall@10 {metadata.recall:.3f}" in caplog.text
    with EmbeddingStore(clustered_store) as store:
        assert load_index(tmp_path / "tuned" / "index.faiss", store)[1] == metadata
        with KnnFile(tmp_path / "tuned" / "knn.h5", store) as knn:
            assert (knn.file.attrs["nprobe"], knn.file.attrs["recall"]) == (metadata.nprobe, metadata.recall)


def test_a_target_reached_as_set_changes_nothing(clustered_store: Path, tmp_path: Path) -> None:
    as_set, untuned = search(clustered_store, tmp_path / "as_set", factory="IVF32,Flat", nprobe=16, recall_target=None)
    tuned, metadata = search(clustered_store, tmp_path / "tuned", factory="IVF32,Flat", nprobe=16)
    assert metadata.nprobe == untuned.nprobe == 16 and metadata.recall >= 0.95
    np.testing.assert_array_equal(tuned, as_set)


def test_an_unreachable_target_searches_with_the_most_tried_and_warns(
    clustered_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.stage_one.recall_target"):
        _, metadata = search(clustered_store, tmp_path, factory="IVF8,PQ4x4", nprobe=1)
    assert metadata.nprobe == 8 and metadata.recall < 0.95, "every list searched: PQ's codes limit the recall"
    warning = f"searched with nprobe 8, the most tried: recall@10 {metadata.recall:.3f} against exact search on 400"
    assert [record.levelno for record in caplog.records] == [logging.WARNING] and warning in caplog.text
    assert "below index.recall_target 0.95" in caplog.text


def test_tuned_search_is_the_same_on_dask_workers_and_reproducible(clustered_store: Path, tmp_path: Path) -> None:
    """The workers search with the tuned nprobe (the configured nprobe 1 finds other neighbours), byte for byte."""
    search(clustered_store, tmp_path, factory="IVF32,Flat", nprobe=1)
    here = (tmp_path / "knn.h5").read_bytes()
    search(clustered_store, tmp_path, factory="IVF32,Flat", nprobe=1, workers=2)
    assert (tmp_path / "knn.h5").read_bytes() == here


def test_hnsw_ef_search_is_doubled_until_the_recall_target(clustered_store: Path, tmp_path: Path) -> None:
    exact, _ = search(clustered_store, tmp_path / "flat", factory="Flat")
    as_set, _ = search(clustered_store, tmp_path / "as_set", factory="HNSW4", ef_search=1, recall_target=None)
    tuned, metadata = search(clustered_store, tmp_path / "tuned", factory="HNSW4", ef_search=1)
    assert recall_at_k(as_set, exact, K) < 0.7
    assert metadata.ef_search > 1 and metadata.nprobe is None and metadata.recall >= 0.95
    assert recall_at_k(tuned, exact, K) >= 0.95


def test_hnsw_ef_search_is_doubled_up_to_its_limit() -> None:
    index = faiss.index_factory(8, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    tried = breadths_to_try(index, SearchBreadth(ef_search=1000))
    assert [breadth.ef_search for breadth in tried] == [1000, 2000, 4000, EF_SEARCH_LIMIT]
    assert {breadth.nprobe for breadth in tried} == {None}
    assert doublings(3, 10) == [3, 6, 10] and doublings(64, 64) == [64]


def test_facekd_index_prints_the_breadth_and_recall(clustered_store: Path, tmp_path: Path) -> None:
    params = index_mine_params(tmp_path, clustered_store, factory="IVF32,Flat", nprobe=1, train_sample=2000,
                               recall_queries=400)
    output = run_cli("index", "--params", str(params), "--quiet")
    assert "teacher.faiss: searched with nprobe " in output and "against exact search on 400 sampled images" in output


@pytest.mark.parametrize(("value", "expected"), [(0, "expected greater than 0"), (1.5, "expected less than or equal to 1")])
def test_recall_target_outside_0_1_is_refused(value: float, expected: str) -> None:
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["index"]["recall_target"] = value
    with pytest.raises(SettingsError) as error:
        validate_settings(values)
    assert error.value.lines == [f"index.recall_target: {value} — {expected}"]
