"""`facekd index`, `facekd mine` and `facekd pairs ...` end to end on a store from the tiny ONNX teacher."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline.stage_one.contact_sheet import CAPTION_LINES, LINE_HEIGHT, PADDING, cell_origin, thumbnail
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.stage_one.index import faiss_has_gpu
from pipeline.stage_one.pair_queries import describe_pairs, hardest_pairs, suspicious_pairs
from pipeline.stage_one.pair_table import HARD_NEGATIVE, HARD_POSITIVE, PairTable
from pipeline.stage_one.store import EmbeddingStore
from stages.cli import cli
from tests.data.test_keyed_images import forbid_listing
from tests.stage_one.index_mine_cli import DUPLICATE_KEY, WIDE, index_mine_params, run_cli
from tests.stage_one.stores import write_projection_store


def _paths(params: Path) -> tuple[Path, Path]:
    mine_section = yaml.safe_load(params.read_text())["mine"]
    return Path(mine_section["out"]), Path(mine_section["store"])


def test_index_and_mine_write_every_declared_output(mined: Path) -> None:
    sections = yaml.safe_load(mined.read_text())
    index_path = Path(sections["index"]["out"])
    assert index_path.is_file() and index_path.with_name("teacher.faiss.json").is_file()
    metrics = json.loads(Path(sections["mine"]["summary"]).read_text())
    assert metrics["anchors"] == 43 and metrics["knn_k"] == 10
    assert metrics["hard_positives"]["pairs"] == 43 * 3
    assert metrics["hard_negatives"]["p75"] < 0.7 < metrics["hard_positives"]["p25"]
    # the copy is person01's face filed under person04: it pairs suspiciously with all 7 person01 images
    assert metrics["suspicious_pairs"] == 7
    with open(sections["mine"]["histogram"]) as histogram:
        rows = list(csv.DictReader(histogram))
    assert sum(int(row["hard_negatives"]) for row in rows) == metrics["hard_negatives"]["pairs"]
    with open(sections["mine"]["suspicious"]) as suspicious:
        rows = list(csv.DictReader(suspicious))
    assert {row["anchor_key"] for row in rows} | {row["partner_key"] for row in rows} == {
        *(f"person01/{index:03d}.jpg" for index in range(7)), DUPLICATE_KEY
    }
    assert {rows[0]["anchor_key"], rows[0]["partner_key"]} == {"person01/003.jpg", DUPLICATE_KEY}
    assert float(rows[0]["similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert all({row["anchor_identity"], row["partner_identity"]} == {"person01", "person04"} for row in rows)


def test_cli_reports_where_the_index_search_ran(tmp_path: Path, mined: Path) -> None:
    store = Path(yaml.safe_load(mined.read_text())["index"]["store"])
    output = run_cli("index", "--params", str(index_mine_params(tmp_path, store, factory="IVF4,Flat", knn_k=5)), "--quiet")
    assert "IVF4,Flat index of 43 images (image view)" in output
    assert re.search(r"5 nearest neighbours of 43 images, searched on (cpu|cuda)", output)


def test_pairs_top_overall_shows_the_duplicate_first(mined: Path) -> None:
    output = run_cli("pairs", "top", "--params", str(mined), "--n", "3")
    assert "hardest negative pairs (3)" in output
    first_row = next(line for line in output.splitlines() if re.match(r"\W*1\W", line))
    assert "person01/003.jpg" in first_row and DUPLICATE_KEY in first_row and "1.0000" in first_row


def test_pairs_top_of_one_identity_and_one_image(mined: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs_path, store_path = _paths(mined)
    output = run_cli("pairs", "top", "--params", str(mined), "--kind", "positive", "--identity", "person02", "--n", "5")
    with PairTable(pairs_path) as table, EmbeddingStore(store_path) as store:
        anchors = np.flatnonzero(store.labels == store.identity_names.index("person02"))
        expected = describe_pairs(hardest_pairs(table, HARD_POSITIVE, 5, anchors), store)
    assert len(expected) == 5
    for record in expected:
        assert f"{record.similarity:.4f}" in output and record.anchor_key in output and record.partner_key in output
    assert "person02 (2)" in output and "person03" not in output

    forbid_listing(monkeypatch)  # --paths locates the shown images by key
    output = run_cli("pairs", "top", "--pairs", str(pairs_path), "--store", str(store_path), "--image", "person05/000.jpg",
                  "--paths")
    table_rows = [line for line in output.splitlines() if re.match(r"\W*\d+\W", line)]
    assert len(table_rows) == 4 and all("person05/000.jpg" in line for line in table_rows)
    assert str(Path(yaml.safe_load(mined.read_text())["index"]["store"]).parent / "faces" / "person05" / "000.jpg") in output


def test_pairs_sheet_is_a_png_showing_the_pairs(tmp_path: Path, mined: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs_path, store_path = _paths(mined)
    with PairTable(pairs_path) as table, EmbeddingStore(store_path) as store:
        records = describe_pairs(hardest_pairs(table, HARD_NEGATIVE, 5), store)
        dataset = ImageFolderDataset(store.provenance["dataset_root"])
    out = tmp_path / "sheet.png"
    with monkeypatch.context() as no_listing:
        forbid_listing(no_listing)  # only the shown images are read, by key
        output = run_cli("pairs", "sheet", "--params", str(mined), "--out", str(out), "--n", "5", "--columns", "2", "--tile", "48")
    assert "5 negative pairs" in output
    with Image.open(out) as opened:
        assert opened.format == "PNG"
        sheet = np.asarray(opened.convert("RGB"))
    cell_height = 48 + CAPTION_LINES * LINE_HEIGHT + PADDING
    assert sheet.shape == (PADDING + 3 * cell_height, PADDING + 2 * (2 * 48 + PADDING), 3)
    for position, record in enumerate(records):
        x, y = cell_origin(position, 2, 48)
        for offset, row in ((0, record.anchor), (48, record.partner)):
            expected = np.asarray(thumbnail(dataset.load(row), 48))
            np.testing.assert_array_equal(sheet[y : y + 48, x + offset : x + offset + 48], expected)
        caption = sheet[y + 48 : y + cell_height - PADDING, x : x + 96]
        assert (caption < 128).any(), f"no caption text under pair {position}"
    empty_cell_x, empty_cell_y = cell_origin(5, 2, 48)
    assert (sheet[empty_cell_y : empty_cell_y + 48, empty_cell_x : empty_cell_x + 96] == 255).all()


def test_pairs_suspicious_lists_label_noise(tmp_path: Path, mined: Path) -> None:
    pairs_path, store_path = _paths(mined)
    output = run_cli("pairs", "suspicious", "--params", str(mined))
    assert "7 suspicious pairs: different identities, teacher similarity >= 0.7" in output
    assert re.search(r"person01 \(1\)\W+person04 \(4\)\W+7\W+1\.0000", output), output
    with PairTable(pairs_path) as table:
        threshold = float(np.median(table.read(np.arange(len(table))).similarity))
        expected = suspicious_pairs(table, threshold)
    csv_path = tmp_path / "all.csv"
    output = run_cli("pairs", "suspicious", "--params", str(mined), "--threshold", str(threshold), "--csv", str(csv_path))
    assert f"{len(expected)} suspicious pairs" in output and len(expected) > 1
    with open(csv_path) as written:
        rows = list(csv.DictReader(written))
    assert len(rows) == len(expected) and all(row["kind"] == "negative" for row in rows)
    assert [float(row["similarity"]) for row in rows] == sorted((float(row["similarity"]) for row in rows), reverse=True)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["top", "--identity", "nobody"], r"no identity named 'nobody'"),
        (["top", "--image", "person09/000.jpg"], r"no image with key 'person09/000\.jpg'"),
        (["top", "--identity", "person01", "--image", "person01/000.jpg"], r"give --identity or --image, not both"),
        (["sheet", "--out", "x.png", "--dataset", "/no/such/faces"], r"/no/such/faces: dataset not found"),
    ],
)
def test_pairs_errors_are_explained(mined: Path, arguments: list[str], message: str) -> None:
    result = CliRunner(env=WIDE).invoke(cli, ["pairs", *arguments, "--params", str(mined)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert re.search(message, result.output), result.output


def test_pairs_refuse_a_store_the_table_was_not_mined_from(tmp_path: Path, mined: Path, face_folder: Path) -> None:
    pairs_path, _ = _paths(mined)
    other = write_projection_store(tmp_path / "other.h5", face_folder, teacher="q")
    result = CliRunner().invoke(cli, ["pairs", "top", "--pairs", str(pairs_path), "--store", str(other)])
    assert result.exit_code == 1 and "was built from a store with provenance hash" in result.output


@pytest.mark.skipif(faiss_has_gpu(), reason="checks the refusal on a machine without a GPU")
def test_index_on_cuda_without_gpu_is_refused(tmp_path: Path, mined: Path) -> None:
    store = Path(yaml.safe_load(mined.read_text())["index"]["store"])
    result = CliRunner().invoke(cli, ["index", "--params", str(index_mine_params(tmp_path, store, device="cuda")), "--quiet"])
    assert result.exit_code == 1 and "device is 'cuda' but FAISS has no GPU support" in result.output


def test_index_on_dask_workers_writes_the_same_knn_file(tmp_path: Path, mined: Path) -> None:
    store = Path(yaml.safe_load(mined.read_text())["index"]["store"])
    params = index_mine_params(tmp_path, store, knn_k=5)
    run_cli("index", "--params", str(params), "--quiet")
    knn = Path(yaml.safe_load(params.read_text())["index"]["knn"])
    here = knn.read_bytes()
    assert "searched on cpu" in run_cli("index", "--params", str(params), "--workers", "2", "--quiet")
    assert knn.read_bytes() == here
    result = CliRunner().invoke(cli, ["index", "--params", str(params), "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert result.exit_code == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in result.output


def test_mine_on_dask_workers_writes_the_same_outputs(tmp_path: Path, mined: Path) -> None:
    store = Path(yaml.safe_load(mined.read_text())["index"]["store"])
    params = index_mine_params(tmp_path, store)
    run_cli("index", "--params", str(params), "--quiet")
    run_cli("mine", "--params", str(params), "--quiet")
    outputs = sorted((tmp_path / "pairs").iterdir())
    here = [path.read_bytes() for path in outputs]
    assert len(outputs) == 4
    assert "hard positives mined on 2 local dask worker processes" in run_cli("mine", "--params", str(params), "--workers", "2", "--quiet")
    assert [path.read_bytes() for path in outputs] == here
    result = CliRunner().invoke(cli, ["mine", "--params", str(params), "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9" in result.output
