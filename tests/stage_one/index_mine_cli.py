"""`facekd index` and `facekd mine` through the command line, in process, on settings written for a store."""
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from stages.cli import cli
from tests.stage_one.stores import write_projection_store
from tests.tiny_faces import write_face_folder

WIDE = {"COLUMNS": "250"}  # rich would fold long keys at the default 80 columns
DUPLICATE_KEY = "person04/copy_of_person01_003.jpg"


def index_mine_params(tmp_path: Path, store: Path, **index_changes) -> Path:
    """A params.yaml with `index` and `mine` sections on `store`, every output under `tmp_path`."""
    index_section = {
        "store": str(store), "out": str(tmp_path / "index" / "teacher.faiss"), "knn": str(tmp_path / "index" / "knn.h5"),
        "view": "image", "factory": "Flat", "train_sample": 1000, "nprobe": 4, "ef_search": 32, "knn_k": 10,
        "rows_per_search": 16, "threads": 1, "device": "auto", "seed": 0,
    }
    index_section.update(index_changes)
    mine_section = {
        "store": str(store), "knn": index_section["knn"], "hard_negatives_per_anchor": 4, "hard_positives_per_anchor": 3,
        "suspicious_threshold": 0.7, "histogram_bins": 10, "rows_per_block": 16,
        "out": str(tmp_path / "pairs" / "pairs.h5"), "summary": str(tmp_path / "pairs" / "mining_summary.json"),
        "histogram": str(tmp_path / "pairs" / "similarity_histogram.csv"),
        "suspicious": str(tmp_path / "pairs" / "suspicious_pairs.csv"),
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"index": index_section, "mine": mine_section}))
    return path


def run_cli(*arguments: str) -> str:
    """`facekd *arguments`, which must succeed; its output."""
    result = CliRunner(env=WIDE).invoke(cli, list(arguments))
    assert result.exit_code == 0, result.output
    return result.output


def index_and_mine_faces_with_a_duplicate(root: Path) -> Path:
    """Six identities; one image of person01 is also filed under person04 (label noise). The params.yaml."""
    faces = write_face_folder(root / "faces", identities=6, images=7)
    shutil.copy(faces / "person01" / "003.jpg", faces / DUPLICATE_KEY)
    params = index_mine_params(root, write_projection_store(root / "store.h5", faces))
    for command in ("index", "mine"):
        run_cli(command, "--params", str(params), "--quiet")
    return params
