"""Stage one end to end: real images, a real ONNX teacher, a real dask LocalCluster, real HDF5."""
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.errors import CorruptImageError, FacekdError
from pipeline.stage_one.store import EmbeddingStore, journal_path, partial_path
from pipeline.face_model import OnnxFaceModel
from stages.cli import cli
from tests.stage_one.stores import embed_here
from tests.tiny_faces import TINY_DIM, write_face_folder


@pytest.fixture(scope="module")
def single_process_store(tmp_path_factory, face_folder: Path, tiny_teacher: Path) -> Path:
    path = tmp_path_factory.mktemp("stores") / "reference.h5"
    embed_here(ImageFolderDataset(face_folder), str(tiny_teacher), path, images_per_block=8)
    return path


def test_store_equals_direct_computation(single_process_store: Path, face_folder: Path, tiny_teacher: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    images = np.stack([dataset.load(i) for i in range(len(dataset))])
    direct = OnnxFaceModel(tiny_teacher).embed_with_flip(images)
    with EmbeddingStore(single_process_store) as store:
        np.testing.assert_array_equal(store.read_embeddings(), direct.astype(np.float16))
        np.testing.assert_allclose(store.read_norms(), np.linalg.norm(direct, axis=2), rtol=1e-6)
        np.testing.assert_array_equal(store.labels, dataset.labels)
        assert store.keys == dataset.keys
        assert store.provenance["dataset_fingerprint"] == dataset.fingerprint()
        assert store.provenance["teacher_sha256"] == OnnxFaceModel(tiny_teacher).sha256
        assert store.provenance["num_images"] == len(dataset) and not store.skipped.any()


def test_one_and_two_dask_workers_give_identical_stores(
    tmp_path: Path, single_process_store: Path, face_folder: Path, tiny_teacher: Path
) -> None:
    dataset = ImageFolderDataset(face_folder)
    reference = single_process_store.read_bytes()
    for workers in (1, 2):
        path = tmp_path / f"workers{workers}.h5"
        summary = embed_here(dataset, str(tiny_teacher), path, images_per_block=8, workers=workers)
        assert summary.embedded_blocks == 6 and not summary.up_to_date
        assert path.read_bytes() == reference, f"{workers} dask workers changed the store"


def test_existing_complete_store_is_reused(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    path = tmp_path / "s.h5"
    embed_here(ImageFolderDataset(face_folder), tiny_teacher, path, images_per_block=8)
    before = path.stat().st_mtime_ns
    summary = embed_here(ImageFolderDataset(face_folder), tiny_teacher, path, images_per_block=8)
    assert summary.up_to_date and path.stat().st_mtime_ns == before


KILLABLE_EMBED = textwrap.dedent(
    """
    import sys, time
    from pipeline.data.image_folder import ImageFolderDataset
    from pipeline.stage_one.config import EmbedConfig
    from pipeline.stage_one.embed import embed_dataset

    class SlowFolder(ImageFolderDataset):
        def load(self, index):
            time.sleep(0.02)  # slow enough that the test can kill the run in the middle
            return super().load(index)

    if __name__ == "__main__":
        folder, teacher, store = sys.argv[1:]
        config = EmbedConfig(teacher=teacher, store=store, workers=0, images_per_block=4)
        embed_dataset(SlowFolder(folder), config, dataset_root="", scheduler=None, progress=False)
    """
)


def test_kill_9_then_rerun_gives_the_uninterrupted_store(
    tmp_path: Path, single_process_store: Path, face_folder: Path, tiny_teacher: Path
) -> None:
    script = tmp_path / "killable_embed.py"
    script.write_text(KILLABLE_EMBED)
    store = tmp_path / "killed.h5"
    process = subprocess.Popen(
        [sys.executable, str(script), str(face_folder), str(tiny_teacher), str(store)],
        cwd=Path(__file__).parents[2],
    )
    journal = journal_path(store)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the embedding finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before_kill = journal.read_text().count("\n")
    assert partial_path(store).exists() and not store.exists()
    assert 3 <= finished_before_kill < 11

    summary = embed_here(ImageFolderDataset(face_folder), tiny_teacher, store, images_per_block=4)
    assert summary.resumed_blocks == finished_before_kill
    assert summary.embedded_blocks == 11 - finished_before_kill
    reference = tmp_path / "uninterrupted.h5"
    embed_here(ImageFolderDataset(face_folder), str(tiny_teacher), reference, images_per_block=4)
    assert store.read_bytes() == reference.read_bytes()
    assert not partial_path(store).exists() and not journal.exists()


@pytest.fixture
def folder_with_corrupt_image(tmp_path: Path) -> Path:
    root = write_face_folder(tmp_path / "faces", identities=3, images=4)
    (root / "person01" / "002.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


def test_corrupt_image_names_the_file(tmp_path: Path, folder_with_corrupt_image: Path, tiny_teacher: Path) -> None:
    dataset = ImageFolderDataset(folder_with_corrupt_image)
    with pytest.raises(CorruptImageError, match=r"person01/002\.jpg: cannot decode image") as error:
        embed_here(dataset, str(tiny_teacher), tmp_path / "s.h5", images_per_block=4)
    assert "not a known image format; 21 bytes starting b'\\xff\\xd8 this '" in str(error.value)
    assert "BytesIO" not in str(error.value)  # PIL's own message names only its in-memory buffer
    assert not (tmp_path / "s.h5").exists()


def test_skip_policy_lists_skipped_keys(tmp_path: Path, folder_with_corrupt_image: Path, tiny_teacher: Path) -> None:
    dataset = ImageFolderDataset(folder_with_corrupt_image)
    path = tmp_path / "s.h5"
    summary = embed_here(dataset, tiny_teacher, path, images_per_block=4, on_corrupt="skip")
    assert summary.num_skipped == 1
    with EmbeddingStore(path) as store:
        skipped_keys = [store.keys[i] for i in np.flatnonzero(store.skipped)]
        assert skipped_keys == ["person01/002.jpg"]
        assert not store.read_embeddings()[dataset.keys.index("person01/002.jpg")].any()
    result = CliRunner().invoke(cli, ["store", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "skipped keys (1)" in result.output and "person01/002.jpg" in result.output


def test_mixed_image_sizes_are_refused(tmp_path: Path, tiny_teacher: Path) -> None:
    root = write_face_folder(tmp_path / "faces", identities=2, images=2)
    shutil.copy(write_face_folder(tmp_path / "big", 1, 1, size=40) / "person00" / "000.jpg", root / "person01" / "001.jpg")
    with pytest.raises(FacekdError, match=r"person01/001\.jpg: image is 40x40 but .*person00/000\.jpg is 32x32"):
        embed_here(ImageFolderDataset(root), str(tiny_teacher), tmp_path / "s.h5")


def _params(tmp_path: Path, face_folder: Path, tiny_teacher: Path, **changes) -> Path:
    embed_section = {
        "dataset": str(face_folder), "dataset_format": "auto", "teacher": str(tiny_teacher),
        "preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5}, "resize": False, "device": "auto",
        "workers": 0, "threads_per_worker": 1, "images_per_block": 16, "batch_size": 32, "on_corrupt": "error",
        "dtype": "float16", "store": str(tmp_path / "cli.h5"),
    }
    embed_section.update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"embed": embed_section}))
    return path


def test_cli_embed_then_reuse_then_info(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    params = _params(tmp_path, face_folder, tiny_teacher)
    runner = CliRunner()
    first = runner.invoke(cli, ["embed", "--params", str(params), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "42 images embedded" in first.output
    second = runner.invoke(cli, ["embed", "--params", str(params), "--quiet"])
    assert second.exit_code == 0 and "already complete for this teacher and dataset" in second.output
    info = runner.invoke(cli, ["store", "info", str(tmp_path / "cli.h5")])
    assert info.exit_code == 0, info.output
    assert "teacher_sha256" in info.output and "embedding norms" in info.output and f"{TINY_DIM}-d float16" in info.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"images_per_block": 0}, r"embed\.images_per_block: 0 — expected greater than 0"),
        ({"block_size": 16}, r"embed\.block_size: 16 — embed\.block_size was renamed to embed\.images_per_block"),
        ({"on_corrupt": "ignore"}, r"embed\.on_corrupt: 'ignore' — expected 'error' or 'skip'"),
        ({"teacher": "missing.onnx"}, r"model not found: .*missing\.onnx"),
        ({"dataset": "no/such/folder"}, r"no/such/folder: dataset not found"),
        ({"preprocessing": {"channel_order": "rgb", "mean": 127.5}}, r"embed\.preprocessing\.std: missing — expected a value"),
        ({"preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 0.0}},
         r"params\.yaml: embed\.preprocessing\.std: 0\.0 — expected greater than 0"),
        ({"preprocessing": {"channel_order": "RGB", "mean": 127.5, "std": 127.5}},
         r"params\.yaml: embed\.preprocessing\.channel_order: 'RGB' — expected 'rgb' or 'bgr'"),
        ({"dtype": "int8"}, r"embed\.dtype: 'int8' — expected 'float16' or 'float32'"),
    ],
)
def test_cli_bad_parameters_get_clear_errors(tmp_path, face_folder, tiny_teacher, changes, message) -> None:
    params = _params(tmp_path, face_folder, tiny_teacher, **changes)
    result = CliRunner().invoke(cli, ["embed", "--params", str(params), "--quiet"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output


def test_cli_embed_on_an_existing_dask_cluster(tmp_path: Path, face_folder: Path, tiny_teacher: Path, single_process_store: Path) -> None:
    from distributed import Client, LocalCluster

    params = _params(tmp_path, face_folder, tiny_teacher, images_per_block=8)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        result = CliRunner().invoke(cli, ["embed", "--params", str(params), "--scheduler", cluster.scheduler_address, "--quiet"])
        assert result.exit_code == 0, result.output
        with Client(cluster) as client:  # the cluster is the user's: embed must leave it running
            assert len(client.scheduler_info()["workers"]) == 2
    with EmbeddingStore(tmp_path / "cli.h5") as store, EmbeddingStore(single_process_store) as reference:
        np.testing.assert_array_equal(store.read_embeddings(), reference.read_embeddings())


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    params = _params(tmp_path, face_folder, tiny_teacher)
    result = CliRunner().invoke(cli, ["embed", "--params", str(params), "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert result.exit_code == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in result.output
