"""Hard-pair mining and the pair table: checked against brute force on hand-built and teacher-built stores."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import pipeline.stage_one.miners as miners
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.errors import FacekdError, ProvenanceMismatchError
from pipeline.hdf5 import written_hdf5
from pipeline.stage_one.index import build_index, search_knn
from pipeline.stage_one import worker_store
from pipeline.stage_one.miners import lowest_similarities, mine_and_report, mine_pairs, positives_on_worker
from pipeline.stage_one.worker_store import StoreFile
from pipeline.stage_one.mining_report import MiningSummary, SimilarityDistribution, write_histogram_csv, write_summary_json
import pipeline.stage_one.pair_queries as pair_queries
from pipeline.stage_one.pair_queries import describe_pairs, hardest_pairs, suspicious_pair_passes, suspicious_pairs, write_pairs_csv
from pipeline.stage_one.pair_table import CHECKED_DATASETS, HARD_NEGATIVE, HARD_POSITIVE, PAIR_COLUMNS, Pairs, PairTable, PairTableWriter
from pipeline.stage_one.inspection import suspicious_overview
from pipeline.stage_one.store_views import unit_vectors
from pipeline.stage_one.store import EmbeddingStore
from tests.stage_one.stores import clustered_vectors, embed_here, index_config, mine_config, write_store


def index_and_mine(store_path: Path, tmp_path: Path, k: int, name: str = "pairs.h5", **options) -> MiningSummary:
    with EmbeddingStore(store_path) as store:
        config = index_config(tmp_path, knn_k=k, rows_per_search=16)
        build_index(store, config, progress=False)
        search_knn(store, config, progress=False)
        return mine_pairs(store, mine_config(tmp_path, name, rows_per_block=16, **options), progress=False)


def brute_force_pairs(store_path: Path, k: int, negatives: int, positives: int) -> dict[int, list[tuple[int, int]]]:
    """anchor -> [(kind, partner), ...] in table order, from the full numpy similarity matrix."""
    with EmbeddingStore(store_path) as store:
        vectors = unit_vectors(store.read_embeddings(), "image")
        labels, usable = store.labels, ~store.skipped
    similarities = vectors @ vectors.T
    expected = {}
    for anchor in np.flatnonzero(usable):
        others = np.flatnonzero(usable & (np.arange(len(labels)) != anchor))
        nearest = others[np.argsort(-similarities[anchor, others], kind="stable")][:k]
        hard_negatives = [row for row in nearest if labels[row] != labels[anchor]][:negatives]
        own = others[labels[others] == labels[anchor]]
        hard_positives = own[np.argsort(similarities[anchor, own], kind="stable")][:positives]
        expected[anchor] = [(HARD_NEGATIVE, int(row)) for row in hard_negatives] + [(HARD_POSITIVE, int(row)) for row in hard_positives]
    return expected


@pytest.fixture
def uneven_store(tmp_path: Path) -> Path:
    """Identities of 1 to 12 images, a few skipped images, an identity whose only image is skipped."""
    rng = np.random.default_rng(0)
    sizes = [1, 12, 5, 2, 9, 3, 7, 1, 11, 4, 6, 1]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), 12))
    vectors = centres[labels] + 0.9 * rng.normal(size=(len(labels), 12))
    skipped = np.zeros(len(labels), bool)
    skipped[[0, 5, 30, len(labels) - 1]] = True  # identity 0 and the last identity lose their only image
    return write_store(tmp_path / "store.h5", vectors, labels, skipped=skipped, block_size=16)


@pytest.fixture
def interleaved_store(tmp_path: Path, uneven_store: Path) -> Path:
    """The uneven store with its rows shuffled, so an identity's images are scattered over the store."""
    with EmbeddingStore(uneven_store) as store:
        order = np.random.default_rng(1).permutation(len(store))
        vectors, labels, skipped = store.read_embeddings()[order, 0], store.labels[order], store.skipped[order]
    return write_store(tmp_path / "interleaved.h5", vectors, labels, skipped=skipped, block_size=16)


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory, face_folder: Path, tiny_teacher: Path) -> Path:
    path = tmp_path_factory.mktemp("teacher_store") / "store.h5"
    embed_here(ImageFolderDataset(face_folder), str(tiny_teacher), path, images_per_block=16)
    return path


@pytest.mark.parametrize("store_fixture", ["uneven_store", "interleaved_store", "teacher_store"])
def test_pair_table_equals_brute_force(request, tmp_path: Path, store_fixture: str) -> None:
    store_path = request.getfixturevalue(store_fixture)
    index_and_mine(store_path, tmp_path, k=10, hard_negatives_per_anchor=4, hard_positives_per_anchor=3)
    expected = brute_force_pairs(store_path, k=10, negatives=4, positives=3)
    with PairTable(tmp_path / "pairs.h5") as table, EmbeddingStore(store_path) as store:
        table.check_store(store)
        pairs = table.read(np.arange(len(table)))
        vectors = unit_vectors(store.read_embeddings(), "image")
        labels = store.labels
        for anchor in range(len(store)):
            rows = slice(table.offsets[anchor], table.offsets[anchor + 1])
            found = list(zip(pairs.kind[rows].tolist(), pairs.partner[rows].tolist()))
            assert found == expected.get(anchor, []), f"anchor {anchor}"
            assert (pairs.anchor[rows] == anchor).all()
        assert list(pairs.rank[pairs.kind == HARD_POSITIVE][:3]) == [0, 1, 2]
    np.testing.assert_allclose(pairs.similarity, np.sum(vectors[pairs.anchor] * vectors[pairs.partner], axis=1), atol=1e-5)
    np.testing.assert_array_equal(pairs.same_identity, labels[pairs.anchor] == labels[pairs.partner])
    np.testing.assert_array_equal(pairs.same_identity, pairs.kind == HARD_POSITIVE)
    order = np.lexsort((pairs.rank, pairs.kind, pairs.anchor))
    np.testing.assert_array_equal(order, np.arange(len(pairs)))


def test_skipped_images_and_singletons_have_no_pairs(tmp_path: Path, uneven_store: Path) -> None:
    summary = index_and_mine(uneven_store, tmp_path, k=6, hard_negatives_per_anchor=3, hard_positives_per_anchor=2)
    with PairTable(tmp_path / "pairs.h5") as table:
        pairs = table.read(np.arange(len(table)))
        counts = np.diff(table.offsets)
    assert (counts[[0, 5, 30, len(counts) - 1]] == 0).all()
    assert not np.isin(pairs.partner, [0, 5, 30, len(counts) - 1]).any()
    with EmbeddingStore(uneven_store) as store:
        (singleton,) = np.flatnonzero(store.labels == 7)  # identity 7's only image
    assert (pairs.kind[pairs.anchor == singleton] == HARD_NEGATIVE).all()
    assert summary.num_anchors == len(counts) - 4


def test_lowest_similarities_is_the_same_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    vectors = unit_vectors(rng.normal(size=(23, 2, 8)), "image")
    whole_positions, whole_similarities = lowest_similarities(vectors, 5)
    monkeypatch.setattr(miners, "SIMILARITY_BUDGET", 50)  # two rows of the 23 x 23 matrix at a time
    positions, similarities = lowest_similarities(vectors, 5)
    np.testing.assert_array_equal(positions, whole_positions)
    np.testing.assert_allclose(similarities, whole_similarities, atol=1e-6)  # BLAS blocking changes the last bit
    full = vectors @ vectors.T
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(positions, np.argsort(full, axis=1, kind="stable")[:, :5])


def test_hard_positives_never_pair_an_image_with_itself_even_among_duplicates() -> None:
    vectors = unit_vectors(np.random.default_rng(2).normal(size=(4, 2, 8)), "image")
    vectors[1] = vectors[2] = vectors[0]  # three copies: self ties with two partners at similarity 1
    positions, similarities = lowest_similarities(vectors, 5)
    assert positions.shape == (4, 3)
    for anchor in range(4):
        assert sorted(positions[anchor]) == [row for row in range(4) if row != anchor]
    assert similarities[0, 0] < 1 and similarities[0, 1] == pytest.approx(1.0)


def test_pair_table_bytes_are_reproducible(tmp_path: Path, uneven_store: Path) -> None:
    index_and_mine(uneven_store, tmp_path, k=8, name="first.h5")
    index_and_mine(uneven_store, tmp_path, k=8, name="second.h5")
    assert (tmp_path / "first.h5").read_bytes() == (tmp_path / "second.h5").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def store_with_duplicates(tmp_path: Path) -> Path:
    """Clustered identities, one image copied into another identity and one near copy: label noise."""
    vectors, labels = clustered_vectors(12, 6, 24, spread=0.7, seed=5)
    vectors[40] = vectors[3]
    vectors[70] = vectors[20] + 0.05 * np.random.default_rng(6).normal(size=24) / np.sqrt(24)
    return write_store(tmp_path / "store.h5", vectors, labels, block_size=16)


def test_suspicious_pairs_are_the_planted_duplicates(tmp_path: Path, store_with_duplicates: Path) -> None:
    summary = index_and_mine(store_with_duplicates, tmp_path, k=8, suspicious_threshold=0.9)
    assert summary.suspicious_pairs == 2, "each duplicate is one unordered pair, reported once"
    with open(tmp_path / "pairs.suspicious.csv") as written:
        rows = list(csv.DictReader(written))
    assert {tuple(sorted((int(row["anchor"]), int(row["partner"])))) for row in rows} == {(3, 40), (20, 70)}
    assert float(rows[0]["similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[1]["similarity"]) < float(rows[0]["similarity"])
    with PairTable(tmp_path / "pairs.h5") as table:
        negatives = table.read(np.arange(len(table)))
        natural = negatives.similarity[(negatives.kind == HARD_NEGATIVE) & ~np.isin(negatives.anchor, [3, 40, 20, 70])]
        assert natural.max() < 0.9, "the threshold must separate planted duplicates from real hard negatives"
        assert len(suspicious_pairs(table, -1.0)) < (negatives.kind == HARD_NEGATIVE).sum(), "mirrored pairs are merged"


@pytest.mark.parametrize("rows_per_pass", [1, 7, 100_000])
def test_suspicious_overview_streams_what_the_whole_list_gives(tmp_path: Path, rows_per_pass: int) -> None:
    """Count, most similar pairs, identity pairs and CSV from the passes equal those of the whole list at once."""
    labels = np.arange(40) // 3  # 14 identities, so image pairs share identity pairs
    store_path = write_store(tmp_path / "store.h5", np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32), labels)
    with PairTable(write_negative_pairs(tmp_path / "pairs.h5", 40, seed=3)) as table, EmbeddingStore(store_path) as store:
        everything = suspicious_pairs(table, 0.7)
        write_pairs_csv(tmp_path / "expected.csv", [everything], store)
        overview = suspicious_overview(table, store, 0.7, 6, tmp_path / "streamed.csv", rows_per_pass)
    assert overview.total == len(everything) > 6
    shown = everything.take(slice(0, 6))
    assert all(np.array_equal(getattr(overview.most_similar, column), getattr(shown, column)) for column in PAIR_COLUMNS)
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    joined: dict[tuple[int, int], list] = {}
    for anchor, partner, similarity in zip(everything.anchor.tolist(), everything.partner.tolist(), everything.similarity.tolist()):
        low, high = sorted((int(labels[anchor]), int(labels[partner])))
        joined.setdefault((low, high), [0, len(joined), similarity])[0] += 1  # count, order of appearance, first similarity
    expected = sorted(joined.items(), key=lambda item: (-item[1][0], item[1][1]))[:6]
    assert [(pair.low, pair.high, pair.image_pairs, pair.max_similarity) for pair in overview.identity_pairs] == [
        (low, high, count, pytest.approx(similarity)) for (low, high), (count, _, similarity) in expected
    ]
    assert any(count > 1 for count, _, _ in joined.values()), "some identity pairs join several image pairs"


def test_pairs_csv_holds_the_described_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV, written column by column in parts, reads back as `describe_pairs`' records, awkward keys included."""
    vectors, labels = clustered_vectors(4, 5, 8, 0.5, seed=1)
    keys = [f'id{label}/"odd", näme\t{row}.jpg' for row, label in enumerate(labels)]
    names = [f"person, {label} «{label}»" for label in range(4)]
    store_path = write_store(tmp_path / "store.h5", vectors, labels, keys=keys, identity_names=names)
    rng = np.random.default_rng(2)
    kinds = rng.integers(0, 2, 30).astype(np.uint8)
    pairs = Pairs(
        anchor=rng.integers(0, 20, 30), partner=rng.integers(0, 20, 30), similarity=rng.uniform(-1, 1, 30).astype(np.float32),
        same_identity=kinds, kind=kinds, rank=rng.integers(0, 8, 30).astype(np.int32),
    )
    monkeypatch.setattr(pair_queries, "DESCRIBED_ROWS", 4)  # parts described across several chunks
    with EmbeddingStore(store_path) as store:
        written = write_pairs_csv(tmp_path / "pairs.csv", [pairs.take(slice(0, 7)), pairs.take(slice(7, 30))], store)
        records = describe_pairs(pairs, store)
    with open(tmp_path / "pairs.csv", newline="") as read_back:
        rows = list(csv.DictReader(read_back))
    assert written == len(rows) == 30
    assert rows == [{field: f"{value:.6f}" if isinstance(value, float) else str(value) for field, value in vars(record).items()}
                    for record in records]
    assert [(record.kind, record.rank, record.similarity, record.anchor, record.anchor_key, record.anchor_identity,
             record.partner, record.partner_key, record.partner_label, record.partner_identity) for record in records] == [
        (("negative", "positive")[kind], rank, float(similarity), anchor, keys[anchor], names[labels[anchor]],
         partner, keys[partner], labels[partner], names[labels[partner]])
        for kind, rank, similarity, anchor, partner in zip(kinds, pairs.rank, pairs.similarity, pairs.anchor, pairs.partner)
    ]


def write_negative_pairs(path: Path, num_images: int, seed: int) -> Path:
    """A pair table of hard negatives only, many mirrored with a slightly different similarity (as two
    kNN searches can give) and many tied, so the order and the merging of mirrors are both tested."""
    rng = np.random.default_rng(seed)
    anchors = np.repeat(np.arange(num_images), 4)
    partners = (anchors + rng.integers(1, num_images, len(anchors))) % num_images
    similarities = np.round(rng.uniform(0.5, 1.0, len(anchors)), 2).astype(np.float32)
    anchors, partners = np.concatenate([anchors, partners]), np.concatenate([partners, anchors])
    similarities = np.concatenate([similarities, similarities + rng.choice([0, 0, 0.01, -0.01], len(similarities))])
    _, unique = np.unique(np.stack([anchors, partners], axis=1), axis=0, return_index=True)
    order = unique[np.lexsort((-similarities[unique], anchors[unique]))]
    anchors, partners, similarities = anchors[order], partners[order], similarities[order].astype(np.float32)
    counts = np.bincount(anchors, minlength=num_images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with written_hdf5(path, CHECKED_DATASETS) as (h5file, checksum):
        writer = PairTableWriter(h5file, {"store_provenance_hash": "0" * 64}, checksum)
        writer.append({
            "anchor": anchors, "partner": partners, "similarity": similarities,
            "same_identity": np.zeros(len(anchors), np.uint8), "kind": np.full(len(anchors), HARD_NEGATIVE, np.uint8),
            "rank": (np.arange(len(anchors)) - offsets[anchors]).astype(np.int32),
        })
        writer.finish(offsets)
    return path


@pytest.mark.parametrize("rows_per_pass", [1, 7, 100_000])
def test_suspicious_pairs_in_passes_are_the_brute_force_list(tmp_path: Path, rows_per_pass: int) -> None:
    """Most similar first (ties by anchor, partner), each unordered pair at its first occurrence, whatever the passes."""
    with PairTable(write_negative_pairs(tmp_path / "pairs.h5", 40, seed=3)) as table:
        everything = table.read(np.arange(len(table)))
        passes = list(suspicious_pair_passes(table, 0.7, rows_per_pass, block_size=50))
    candidates = sorted(
        (-similarity, anchor, partner, rank)
        for anchor, partner, similarity, rank in zip(
            everything.anchor.tolist(), everything.partner.tolist(), everything.similarity.tolist(), everything.rank.tolist())
        if similarity >= np.float32(0.7)
    )
    expected, seen = [], set()
    for negated, anchor, partner, rank in candidates:
        if frozenset((anchor, partner)) not in seen:
            seen.add(frozenset((anchor, partner)))
            expected.append((anchor, partner, -negated, rank))
    found = Pairs.concatenate(passes)
    assert list(zip(found.anchor.tolist(), found.partner.tolist(), found.similarity.tolist(), found.rank.tolist())) == expected
    assert (len(passes) > 1) == (rows_per_pass < len(candidates))
    mirrored = {(anchor, partner) for _, anchor, partner, _ in candidates} & {(partner, anchor) for _, anchor, partner, _ in candidates}
    assert len(expected) < len(candidates) and mirrored, "the table has mirrored pairs to merge"


def test_summary_and_histogram_match_the_table(tmp_path: Path, store_with_duplicates: Path) -> None:
    summary = index_and_mine(store_with_duplicates, tmp_path, k=8, histogram_bins=20, suspicious_threshold=0.9)
    write_summary_json(tmp_path / "summary.json", summary)
    write_histogram_csv(tmp_path / "histogram.csv", summary.negatives, summary.positives)
    metrics = json.loads((tmp_path / "summary.json").read_text())
    with PairTable(tmp_path / "pairs.h5") as table:
        pairs = table.read(np.arange(len(table)))
    for kind, name in ((HARD_NEGATIVE, "hard_negatives"), (HARD_POSITIVE, "hard_positives")):
        similarities = pairs.similarity[pairs.kind == kind]
        assert metrics[name]["pairs"] == len(similarities)
        assert metrics[name]["mean"] == pytest.approx(similarities.mean(), abs=1e-4)
        for q in (5, 50, 95):
            assert_is_quantile(metrics[name][f"p{q}"], similarities, q)
    assert metrics["suspicious_pairs"] == 2 and metrics["anchors"] == 72 and metrics["knn_k"] == 8
    with open(tmp_path / "histogram.csv") as histogram:
        rows = list(csv.DictReader(histogram))
    assert len(rows) == 20 and float(rows[0]["similarity"]) == pytest.approx(-0.95)
    assert sum(int(row["hard_negatives"]) for row in rows) == (pairs.kind == HARD_NEGATIVE).sum()
    assert sum(int(row["hard_positives"]) for row in rows) == (pairs.kind == HARD_POSITIVE).sum()
    expected_counts, _ = np.histogram(pairs.similarity[pairs.kind == HARD_POSITIVE].clip(-1, 1), np.linspace(-1, 1, 21))
    assert [int(row["hard_positives"]) for row in rows] == expected_counts.tolist()


def assert_is_quantile(value: float, values: np.ndarray, q: float, resolution: float = 1e-3) -> None:
    """`value` is a q-th percentile of `values` up to the 0.001 grid: q% lie at or below it, (100 - q)% at or above."""
    assert np.mean(values <= value + resolution) >= q / 100
    assert np.mean(values >= value - resolution) >= 1 - q / 100


def test_similarity_distribution_percentiles() -> None:
    values = np.random.default_rng(7).uniform(-0.5, 0.9, 10_000)
    distribution = SimilarityDistribution(10)
    distribution.add(values[:4000])
    distribution.add(values[4000:])
    for q in (1, 25, 50, 99):
        assert_is_quantile(distribution.percentile(q), values, q)
        assert distribution.percentile(q) == pytest.approx(np.percentile(values, q), abs=2e-3)
    assert distribution.summary()["pairs"] == 10_000 and SimilarityDistribution(5).summary()["mean"] is None


def test_hardest_pairs_overall_per_identity_and_per_image(tmp_path: Path, store_with_duplicates: Path) -> None:
    index_and_mine(store_with_duplicates, tmp_path, k=8)
    with PairTable(tmp_path / "pairs.h5") as table, EmbeddingStore(store_with_duplicates) as store:
        everything = table.read(np.arange(len(table)))
        top = hardest_pairs(table, HARD_NEGATIVE, 3, block_size=50)
        assert {int(top.anchor[0]), int(top.partner[0])} == {3, 40}
        negative_similarities = everything.similarity[everything.kind == HARD_NEGATIVE]
        assert np.all(np.diff(top.similarity) <= 0) and top.similarity[2] >= np.sort(negative_similarities)[-6]
        assert len({frozenset(pair) for pair in zip(top.anchor, top.partner)}) == 3

        weakest = hardest_pairs(table, HARD_POSITIVE, 4)
        positive_similarities = everything.similarity[everything.kind == HARD_POSITIVE]
        assert weakest.similarity[0] == positive_similarities.min() and np.all(np.diff(weakest.similarity) >= 0)

        identity_anchors = np.flatnonzero(store.labels == 2)
        of_identity = hardest_pairs(table, HARD_NEGATIVE, 5, anchors=identity_anchors)
        assert np.isin(of_identity.anchor, identity_anchors).all() and (of_identity.kind == HARD_NEGATIVE).all()

        of_image = hardest_pairs(table, HARD_POSITIVE, 10, anchors=np.array([25]))
        assert (of_image.anchor == 25).all() and list(of_image.rank) == list(range(len(of_image)))


def test_mining_refuses_a_knn_file_of_another_store(tmp_path: Path, uneven_store: Path) -> None:
    index_and_mine(uneven_store, tmp_path, k=8)
    with EmbeddingStore(uneven_store) as store:
        labels, vectors = store.labels, store.read_embeddings()[:, 0]
    other = write_store(tmp_path / "other.h5", vectors, labels, teacher="b")
    with EmbeddingStore(other) as store:
        with pytest.raises(ProvenanceMismatchError, match=r"knn\.h5 was built from a store with provenance hash"):
            mine_pairs(store, mine_config(tmp_path, "other_pairs.h5"), progress=False)
        with PairTable(tmp_path / "pairs.h5") as table, pytest.raises(ProvenanceMismatchError, match=r"pairs\.h5"):
            table.check_store(store)
    assert not (tmp_path / "other_pairs.h5").exists()


def test_more_hard_negatives_than_neighbours_is_refused(tmp_path: Path, uneven_store: Path) -> None:
    with pytest.raises(FacekdError, match=r"hard_negatives_per_anchor is 7; expected 1 \.\. 6"):
        index_and_mine(uneven_store, tmp_path, k=6, hard_negatives_per_anchor=7)


def mined_outputs(store_path: Path, tmp_path: Path, scheduler: str | None = None) -> dict[str, bytes]:
    """The bytes of every output of `facekd mine` (small batches, many suspicious pairs), mined here or on `scheduler`."""
    config = mine_config(
        tmp_path, store=str(store_path), rows_per_block=16, hard_negatives_per_anchor=4, hard_positives_per_anchor=3,
        suspicious_threshold=0.2, summary=str(tmp_path / "summary.json"), histogram=str(tmp_path / "histogram.csv"),
    )
    summary = mine_and_report(config, progress=False, scheduler=scheduler)
    assert summary.suspicious_pairs > 0 and summary.positives.count > 0
    return {name: Path(getattr(config, name)).read_bytes() for name in ("out", "summary", "histogram", "suspicious")}


def test_mining_on_dask_workers_writes_the_same_outputs(tmp_path: Path, interleaved_store: Path) -> None:
    """Hard positives mined batch by batch on 2 worker processes (each reading its rows from the store):
    the pair table, summary, histogram and suspicious pairs are byte-identical to this process's."""
    from distributed import Client, LocalCluster

    with EmbeddingStore(interleaved_store) as store:
        config = index_config(tmp_path, store=str(interleaved_store), knn_k=8, rows_per_search=16)
        build_index(store, config, progress=False)
        search_knn(store, config, progress=False)
    here = mined_outputs(interleaved_store, tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert mined_outputs(interleaved_store, tmp_path, scheduler=cluster.scheduler_address) == here
        with Client(cluster) as client:
            holding_the_store = client.run(lambda: bool(miners._worker_identities))
    assert any(holding_the_store.values()), "the batches were mined on the workers"


def test_a_worker_refuses_another_store(tmp_path: Path, uneven_store: Path) -> None:
    with EmbeddingStore(uneven_store) as store:
        checksum = store.content_checksum
    for source in (StoreFile(str(uneven_store), "0" * 64, checksum), StoreFile(str(tmp_path / "absent.h5"), "0" * 64, None)):
        with pytest.raises(FacekdError, match=r"missing on this dask worker, or not the store this command started with"):
            positives_on_worker(source, 0, 1, "image", 2)
    assert not worker_store._opened
