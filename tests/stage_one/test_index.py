"""The FAISS index and the all-vs-all kNN search: real FAISS, real HDF5 stores with known answers."""
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
from tqdm import tqdm

from pipeline.errors import FacekdError, ProvenanceMismatchError
from pipeline.stage_one.index import (
    GPU_MAX_K, build_index, faiss_has_gpu, inserts_into_hnsw, load_index, metadata_path, recall_at_k, search_device,
    search_knn,
)
from pipeline.stage_one.knn_file import KnnFile
from pipeline.stage_one.store_views import unit_vectors
from pipeline.stage_one.store import EmbeddingStore, provenance_hash, read_rows
from tests.stage_one.stores import clustered_vectors, index_and_search, index_config, write_store


def brute_force_knn(store_path: Path, k: int, view: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Each usable row's k most similar other usable rows, by a full numpy similarity matrix."""
    with EmbeddingStore(store_path) as store:
        vectors = unit_vectors(store.read_embeddings(), view)
        usable = ~store.skipped
    similarities = vectors @ vectors.T
    similarities[:, ~usable] = -np.inf
    np.fill_diagonal(similarities, -np.inf)
    neighbours = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    neighbours[~usable] = -1
    return neighbours, np.take_along_axis(similarities, np.maximum(neighbours, 0), axis=1)


@pytest.mark.parametrize("view", ["image", "mean"])
def test_exact_neighbours_equal_brute_force(tmp_path: Path, random_store: Path, view: str) -> None:
    neighbours, similarities = index_and_search(random_store, tmp_path, k=10, view=view)
    expected_neighbours, expected_similarities = brute_force_knn(random_store, 10, view)
    np.testing.assert_array_equal(neighbours, expected_neighbours)
    usable = neighbours[:, 0] >= 0
    np.testing.assert_allclose(similarities[usable], expected_similarities[usable], atol=1e-5)
    assert np.isnan(similarities[~usable]).all() and (neighbours[[3, 64, 65, 299]] == -1).all()
    assert not np.isin(neighbours, [3, 64, 65, 299]).any(), "a skipped image was returned as a neighbour"


def test_self_and_flip_never_returned_but_a_duplicate_image_is(tmp_path: Path) -> None:
    vectors, labels = clustered_vectors(10, 8, 16, spread=0.5, seed=1)
    vectors[41] = vectors[7]  # the same face filed under a second identity
    store = write_store(tmp_path / "store.h5", vectors, labels)  # flip view == image view
    neighbours, similarities = index_and_search(store, tmp_path, k=8)
    rows = np.arange(len(labels))[:, None]
    assert not (neighbours == rows).any()
    assert neighbours[7, 0] == 41 and neighbours[41, 0] == 7
    assert similarities[7, 0] == pytest.approx(1.0, abs=1e-5)
    assert (np.diff(similarities, axis=1) <= 1e-6).all(), "neighbours are not in decreasing similarity"


@pytest.mark.parametrize(("factory", "bound"), [("IVF16,Flat", 0.9), ("HNSW16", 0.95)])
def test_approximate_index_recall_against_exact(tmp_path: Path, factory: str, bound: float) -> None:
    vectors, labels = clustered_vectors(64, 25, 32, spread=0.8, seed=2)
    store = write_store(tmp_path / "store.h5", vectors, labels, block_size=400)
    exact, _ = index_and_search(store, tmp_path, k=10)
    approximate, _ = index_and_search(store, tmp_path, k=10, factory=factory, train_sample=1600, nprobe=4, ef_search=64)
    recall = recall_at_k(approximate, exact, 10)
    print(f"{factory}: recall@10 = {recall:.3f}")
    assert recall >= bound
    assert not (approximate == np.arange(len(labels))[:, None]).any()
    if factory.startswith("IVF"):
        single_list, _ = index_and_search(store, tmp_path, k=10, factory=factory, train_sample=1600, nprobe=1)
        assert recall_at_k(single_list, exact, 10) < recall, "more probed lists should find more true neighbours"


@pytest.mark.parametrize(("factory", "graph"), [
    ("HNSW8", True), ("HNSW8,SQ8", True), ("IVF16_HNSW8,Flat", True), ("PCA16,HNSW8", True), ("IVF16,Flat", False),
    ("Flat", False),
])
def test_indexes_that_insert_into_an_hnsw_graph_are_known(factory: str, graph: bool) -> None:
    assert inserts_into_hnsw(faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)) is graph


@pytest.mark.parametrize(("factory", "build_threads"), [("HNSW16", 1), ("IVF16_HNSW8,Flat", 1), ("IVF16,Flat", 8)])
def test_an_hnsw_graph_is_built_on_one_thread_into_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, build_threads: int
) -> None:
    """FAISS inserts into an HNSW graph in thread order, so it is built on one thread whatever `index.threads`
    says (then searched on them all); other indexes are built on `index.threads`."""
    threads_seen: list[int] = []

    class ThreadsSeen(tqdm):  # the build's progress bar, updated after each added block
        def update(self, n: float | None = 1) -> bool | None:
            threads_seen.append(faiss.omp_get_max_threads())
            return super().update(n)

    monkeypatch.setattr("pipeline.stage_one.index.tqdm", ThreadsSeen)
    vectors, labels = clustered_vectors(64, 40, 32, spread=0.8, seed=3)
    store_path = write_store(tmp_path / "store.h5", vectors, labels, block_size=512)
    threads = faiss.omp_get_max_threads()
    checksums = []
    with EmbeddingStore(store_path) as store:
        for build in ("first", "second"):
            config = index_config(tmp_path / build, factory=factory, threads=8, train_sample=1600, recall_target=None,
                                  rows_per_search=512)
            (tmp_path / build).mkdir()
            checksums.append(build_index(store, config, progress=False).index_checksum)
            assert faiss.omp_get_max_threads() == 8, "the build did not restore FAISS's threads"
    faiss.omp_set_num_threads(threads)
    assert set(threads_seen) == {build_threads} and len(threads_seen) == 10
    assert checksums[0] == checksums[1]


def test_recall_at_k_counts_shared_neighbours() -> None:
    exact = np.array([[1, 2, 3], [0, 2, 3]])
    found = np.array([[3, 1, 9], [7, 8, 9]])
    assert recall_at_k(found, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(found, exact, 1) == pytest.approx(0.0)


def test_index_from_another_store_is_refused(tmp_path: Path) -> None:
    vectors, labels = clustered_vectors(5, 6, 8, spread=0.5, seed=3)
    first = write_store(tmp_path / "first.h5", vectors, labels, teacher="a")
    second = write_store(tmp_path / "second.h5", vectors, labels, teacher="b")
    with EmbeddingStore(first) as store:
        config = index_config(tmp_path, knn_k=4)
        build_index(store, config, progress=False)
        search_knn(store, config, progress=False)
        first_hash = store.provenance_hash
    with EmbeddingStore(second) as store:
        second_hash = store.provenance_hash
        assert first_hash != second_hash
        with pytest.raises(ProvenanceMismatchError, match=rf"index\.faiss was built from .*{first_hash}.*{second_hash}"):
            load_index(tmp_path / "index.faiss", store)
        with pytest.raises(ProvenanceMismatchError, match=rf"knn\.h5 was built from .*{first_hash}.*second\.h5"):
            KnnFile(tmp_path / "knn.h5", store)
    metadata_path(tmp_path / "index.faiss").unlink()
    with EmbeddingStore(first) as store, pytest.raises(FacekdError, match=r"index\.faiss\.json not found"):
        load_index(tmp_path / "index.faiss", store)


def test_read_rows_reads_dense_and_scattered_rows(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "rows.h5", "w") as h5file:
        values = h5file.create_dataset("values", data=np.arange(200).reshape(100, 2))
        for rows in ([3, 4, 6, 7], [0, 50, 99], [42], []):
            np.testing.assert_array_equal(read_rows(values, np.array(rows, dtype=np.int64)), np.arange(200).reshape(100, 2)[rows])


def test_provenance_hash_covers_identity_fields_only() -> None:
    provenance = {"teacher_sha256": "a" * 64, "dataset_fingerprint": "f" * 64, "num_images": 3}
    assert provenance_hash(provenance) == provenance_hash(dict(provenance, num_images=4, facekd_version="9"))
    assert provenance_hash(provenance) != provenance_hash(dict(provenance, teacher_sha256="b" * 64))


def test_index_file_and_metadata_record_the_store(tmp_path: Path, random_store: Path) -> None:
    with EmbeddingStore(random_store) as store:
        metadata = build_index(store, index_config(tmp_path, factory="IVF4,Flat", train_sample=100, seed=5), progress=False)
        assert metadata.store_provenance_hash == store.provenance_hash
        assert (metadata.factory, metadata.ntotal, metadata.train_sample, metadata.seed) == ("IVF4,Flat", 296, 100, 5)
        index, loaded = load_index(tmp_path / "index.faiss", store)
        assert loaded == metadata and index.ntotal == 296
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("requested", "gpu", "k_searched", "expected"),
    [
        ("auto", False, 33, "cpu"),
        ("auto", True, 33, "cuda"),
        ("auto", True, GPU_MAX_K, "cuda"),
        ("cpu", True, 33, "cpu"),
        ("cuda", True, 33, "cuda"),
    ],
)
def test_search_device_choice(requested: str, gpu: bool, k_searched: int, expected: str) -> None:
    assert search_device(requested, gpu, k_searched) == (expected, "")


def test_k_above_the_gpu_limit_falls_back_to_cpu_or_is_refused() -> None:
    device, warning = search_device("auto", True, GPU_MAX_K + 1)
    assert device == "cpu" and "exceeds FAISS's GPU limit of 2048" in warning
    with pytest.raises(FacekdError, match=r"knn_k \+ 1 = 2049 exceeds FAISS's GPU limit of 2048"):
        search_device("cuda", True, GPU_MAX_K + 1)
    with pytest.raises(FacekdError, match=r"device is 'cuda' but FAISS has no GPU support"):
        search_device("cuda", False, 33)
    with pytest.raises(FacekdError, match=r"device is 'tpu'"):
        search_device("tpu", False, 33)


def test_k_above_the_gpu_limit_searches_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = write_store(tmp_path / "store.h5", rng.normal(size=(2100, 8)), rng.integers(0, 50, 2100), block_size=1024)
    neighbours, similarities = index_and_search(store, tmp_path, k=GPU_MAX_K, device="auto")
    _, expected_similarities = brute_force_knn(store, GPU_MAX_K)
    assert neighbours.shape == (2100, GPU_MAX_K)
    # 2048 of 2099 similarities per row have near-ties in 8-d, so compare the values rank by rank
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    assert not (neighbours == np.arange(2100)[:, None]).any()


@pytest.mark.skipif(faiss_has_gpu(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path: Path, random_store: Path) -> None:
    with pytest.raises(FacekdError, match="device is 'cuda' but FAISS has no GPU support or sees no GPU"):
        index_and_search(random_store, tmp_path, k=5, device="cuda")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factory": "NoSuchIndex7"}, r"index factory 'NoSuchIndex7' is not a valid faiss\.index_factory string"),
        ({"factory": "IVF1024,Flat", "train_sample": 500}, r"'IVF1024,Flat': training on 296 vectors failed"),
        ({"view": "left"}, r"view: 'left' — expected 'image' or 'mean'"),
    ],
)
def test_bad_index_settings_are_explained(tmp_path: Path, random_store: Path, options: dict, message: str) -> None:
    with EmbeddingStore(random_store) as store, pytest.raises(FacekdError, match=message):
        build_index(store, index_config(tmp_path, **options), progress=False)
    assert not (tmp_path / "index.faiss").exists()


def test_k_must_leave_a_neighbour_to_find(tmp_path: Path, random_store: Path) -> None:
    with pytest.raises(FacekdError, match=r"knn_k is 296; expected 1 \.\. 295"):
        index_and_search(random_store, tmp_path, k=296)


def test_knn_file_bytes_are_reproducible(tmp_path: Path, random_store: Path) -> None:
    index_and_search(random_store, tmp_path, k=6)
    first = (tmp_path / "knn.h5").read_bytes()
    index_and_search(random_store, tmp_path, k=6)
    assert (tmp_path / "knn.h5").read_bytes() == first
    with h5py.File(tmp_path / "knn.h5") as knn:
        assert knn["neighbours"].chunks == (50, 6)


def test_search_on_dask_workers_writes_the_same_knn_file(tmp_path: Path, random_store: Path) -> None:
    """Query blocks searched by 2 worker processes (each loading the index once): the kNN file is byte-identical."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        for factory in ("Flat", "IVF8,Flat"):
            config = index_config(tmp_path, knn_k=10, rows_per_search=50, factory=factory, train_sample=300, nprobe=2)
            with EmbeddingStore(random_store) as store:
                build_index(store, config, progress=False)
                search_knn(store, config, progress=False)
                here = (tmp_path / "knn.h5").read_bytes()
                search_knn(store, config, progress=False, scheduler=cluster.scheduler_address)
                assert (tmp_path / "knn.h5").read_bytes() == here, factory
    with EmbeddingStore(random_store) as store:  # a local cluster of index.workers processes, started and closed here
        search_knn(store, config.model_copy(update={"workers": 2}), progress=False)
    assert (tmp_path / "knn.h5").read_bytes() == here


def test_search_on_workers_refuses_device_cuda(tmp_path: Path, random_store: Path) -> None:
    config = index_config(tmp_path, knn_k=4, device="cuda", workers=2)
    with EmbeddingStore(random_store) as store:
        build_index(store, config.model_copy(update={"device": "cpu"}), progress=False)
        with pytest.raises(FacekdError, match=r"index\.device is 'cuda'.*workers' CPUs"):
            search_knn(store, config, progress=False)
