"""Exact kNN streamed from the store: checked against FAISS Flat on real stores, on both backends."""
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline.errors import FacekdError
from pipeline.stage_one.config import IndexConfig
from pipeline.stage_one import exact_knn
from pipeline.stage_one.exact_knn import (
    PASS_BLOCKS_MOST, choose_backend, gpu_of_worker, merge_top_k, query_rows_per_pass, search_exact_streamed,
)
from pipeline.stage_one.index import GPU_MAX_K, load_index
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.store import EmbeddingStore
from tests.stage_one.index_mine_cli import index_mine_params, run_cli
from tests.stage_one.stores import index_and_search


def streamed_search(store_path: Path, tmp_path: Path, k: int, backend: str, **settings) -> tuple[np.ndarray, np.ndarray]:
    config = IndexConfig(out=str(tmp_path / "none.faiss"), knn=str(tmp_path / "streamed.h5"), knn_k=k, **settings)
    with EmbeddingStore(store_path) as store:
        search_exact_streamed(store, config, backend=backend, progress=False)
        with KnnFile(tmp_path / "streamed.h5", store) as knn:
            knn.verify()
            return knn.neighbours[:], knn.similarities[:]


# memory of about a byte: one store block of queries per pass, so several passes each stream several database blocks
@pytest.mark.parametrize("backend", ["faiss-cpu", "torch-cpu"])
@pytest.mark.parametrize("memory_gb", [1e-9, 1.0])
@pytest.mark.parametrize("view", ["image", "mean"])
def test_streamed_search_equals_flat(tmp_path: Path, random_store: Path, backend: str, memory_gb: float, view: str) -> None:
    flat_neighbours, flat_similarities = index_and_search(random_store, tmp_path, k=10, view=view)
    neighbours, similarities = streamed_search(
        random_store, tmp_path, k=10, view=view, backend=backend, memory_gb=memory_gb, rows_per_search=50
    )
    np.testing.assert_array_equal(neighbours, flat_neighbours)
    np.testing.assert_allclose(similarities, flat_similarities, rtol=0, atol=1e-5)
    skipped = [3, 64, 65, 299]
    assert np.all(neighbours[skipped] == -1) and np.all(np.isnan(similarities[skipped]))
    assert not np.isin(neighbours, skipped).any()


def test_streamed_search_writes_a_vectorless_index_with_its_sidecar(tmp_path: Path, random_store: Path) -> None:
    streamed_search(random_store, tmp_path, k=5, backend="faiss-cpu", rows_per_search=64)
    with EmbeddingStore(random_store) as store, pytest.raises(FacekdError, match="holds 0 vectors"):
        load_index(tmp_path / "none.faiss", store)
    with h5py.File(tmp_path / "streamed.h5", "r") as knn:
        assert knn.attrs["factory"] == "Flat" and knn.attrs["search"] == "exact, streamed (faiss-cpu)"


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch-cpu"])
def test_streamed_search_on_dask_workers_writes_the_same_knn_file(tmp_path: Path, random_store: Path, backend: str) -> None:
    """Query passes (one store block each) searched on 2 worker processes, each streaming the store itself: the
    kNN file is byte-identical to this process's, on a cluster given by address and on index.workers local ones."""
    from distributed import Client, LocalCluster

    settings = dict(backend=backend, memory_gb=1e-9, rows_per_search=50)
    streamed_search(random_store, tmp_path, k=10, **settings)
    here = (tmp_path / "streamed.h5").read_bytes()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = IndexConfig(out=str(tmp_path / "none.faiss"), knn=str(tmp_path / "streamed.h5"), knn_k=10,
                             memory_gb=1e-9, rows_per_search=50)
        with EmbeddingStore(random_store) as store:
            search_exact_streamed(store, config, backend=backend, progress=False, scheduler=cluster.scheduler_address)
        assert (tmp_path / "streamed.h5").read_bytes() == here
        with Client(cluster) as client:
            searched_on = client.run(lambda: sorted(exact_knn._worker_search))
        assert [(backend, 0)] in searched_on.values(), "the passes were searched on the workers"
    streamed_search(random_store, tmp_path, k=10, workers=2, **settings)
    assert (tmp_path / "streamed.h5").read_bytes() == here


def test_local_workers_take_the_gpus_in_turn() -> None:
    assert [gpu_of_worker(name, 2) for name in range(5)] == [0, 1, 0, 1, 0]
    assert gpu_of_worker("tcp://10.0.0.5:40000", 4) == 0 and gpu_of_worker(3, 0) == 0


def test_merge_keeps_the_best_and_the_earlier_of_equal_scores() -> None:
    best = np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[4, 7, -1]])
    block = np.array([[0.7, 0.5, 0.1]], np.float32), np.array([[12, 10, 11]])
    similarities, rows = merge_top_k(*best, *block, 3)
    np.testing.assert_array_equal(rows, [[4, 12, 7]])
    np.testing.assert_array_equal(similarities, np.array([[0.9, 0.7, 0.5]], np.float32))


def test_query_passes_fill_the_memory_budget_in_whole_blocks() -> None:
    assert query_rows_per_pass(0, 512, 32, 1000) == 1000
    # ~3.6 KB a query: 1 GiB holds 3 blocks of 65,536 queries after one database block
    assert query_rows_per_pass(1 << 30, 512, 32, 65536) == 3 * 65536
    assert query_rows_per_pass(8 << 30, 512, 32, 65536) == PASS_BLOCKS_MOST * 65536  # passes left for workers


@pytest.mark.parametrize(
    "device, faiss_gpu, torch_gpu, k_searched, expected",
    [
        ("auto", False, False, 33, "faiss-cpu"),
        ("auto", True, True, 33, "faiss-gpu"),
        ("auto", False, True, 33, "torch-cuda"),  # faiss-cpu installed on a GPU machine
        ("auto", True, True, GPU_MAX_K + 1, "torch-cuda"),  # above FAISS's GPU limit
        ("auto", True, False, GPU_MAX_K + 1, "faiss-cpu"),
        ("cpu", True, True, 33, "faiss-cpu"),
        ("cuda", False, True, 33, "torch-cuda"),
    ],
)
def test_backend_choice(device: str, faiss_gpu: bool, torch_gpu: bool, k_searched: int, expected: str) -> None:
    assert choose_backend(device, faiss_gpu, torch_gpu, k_searched)[0] == expected


def test_cuda_without_any_gpu_is_refused() -> None:
    with pytest.raises(FacekdError, match="neither FAISS nor torch sees a GPU"):
        choose_backend("cuda", False, False, 33)


def test_cli_streams_the_exact_search_beyond_the_memory_budget(tmp_path: Path, mined: Path) -> None:
    """The same kNN file content as the Flat index of the `mined` fixture, which includes a duplicate image (ties)."""
    store = Path(yaml.safe_load(mined.read_text())["index"]["store"])
    params = index_mine_params(tmp_path, store, memory_gb=1e-6)
    output = run_cli("index", "--params", str(params), "--quiet")
    assert "holds no vectors (a Flat index of 0.0 GB exceeds index.memory_gb)" in output
    assert re.search(r"10 nearest neighbours of 43 images, exact search streamed from the store on (faiss|torch)", output)
    flat_knn = Path(yaml.safe_load(mined.read_text())["index"]["knn"])
    with EmbeddingStore(store) as opened, KnnFile(flat_knn, opened) as flat, KnnFile(tmp_path / "index" / "knn.h5", opened) as streamed:
        similarities = streamed.similarities[:]
        np.testing.assert_allclose(similarities, flat.similarities[:], rtol=0, atol=1e-5)
        for row, column in zip(*np.nonzero(streamed.neighbours[:] != flat.neighbours[:])):
            # ids may differ only among equal scores (the duplicate image and its copy)
            assert np.sum(np.abs(similarities[row] - similarities[row, column]) < 1e-6) >= 2
    run_cli("mine", "--params", str(params), "--quiet")  # mining reads the streamed kNN file
