"""Stage one under faults: full disks, file-size limits, a second writer, non-finite values, damaged
files, Ctrl-C under dask and kill -9. Each fault must end in one line naming the file, a resumable
or untouched state, and after the fault is gone, the bytes of an uninterrupted run.

Everything is real: `facekd` subprocesses, a real tmpfs where mounting is permitted, real
RLIMIT_FSIZE, real signals, real HDF5 / ONNX Runtime / FAISS / dask.
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.checksums import file_checksum
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.errors import FacekdError
from pipeline.files import exclusive_writer
from pipeline.stage_one.index import build_index, load_index, metadata_path, search_knn
from pipeline.stage_one.miners import mine_pairs
from pipeline.stage_one.pair_table import PairTable
from pipeline.stage_one.store import EmbeddingStore, StoreWriter, journal_path, partial_path
from tests.stage_one.stores import embed_here, index_config, mine_config
from tests.tiny_faces import TinyFaceNet, export_tiny_onnx, write_face_folder

REPO = Path(__file__).parents[2]
BLOCK_SIZE = 4

# `embed_dataset` in a process of its own, each image slowed down, and held after two blocks while
# a gate file is missing (so a test can act in the middle of a run without timing assumptions).
SLOW_EMBED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.data.image_folder import ImageFolderDataset
    from pipeline.stage_one.config import EmbedConfig
    from pipeline.stage_one.embed import embed_dataset

    class SlowFolder(ImageFolderDataset):
        def load(self, index):
            while GATE and index >= 2 * BLOCK_SIZE and not GATE.exists():
                time.sleep(0.01)
            time.sleep(DELAY)
            return super().load(index)

    if __name__ == "__main__":
        folder, teacher, store, BLOCK_SIZE, DELAY, GATE = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
        GATE = Path(GATE) if GATE else None
        config = EmbedConfig(teacher=teacher, store=store, workers=0, images_per_block=BLOCK_SIZE)
        embed_dataset(SlowFolder(folder), config, dataset_root="", scheduler=None, progress=False)
    """
)


# The real command line, with every image read held until a gate file exists.
GATED_CLI = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.data.image_folder import ImageFolderDataset
    from stages.cli import main

    gate = Path(sys.argv.pop(1))
    load = ImageFolderDataset.load

    def gated_load(self, index):
        while not gate.exists():
            time.sleep(0.01)
        return load(self, index)

    ImageFolderDataset.load = gated_load
    main()
    """
)


def slow_embed(tmp_path: Path, faces: Path, teacher: Path, store: Path, delay: float, gate: Path | None = None) -> subprocess.Popen:
    script = tmp_path / "slow_embed.py"
    script.write_text(SLOW_EMBED)
    arguments = [str(faces), str(teacher), str(store), str(BLOCK_SIZE), str(delay), str(gate or "")]
    return subprocess.Popen([sys.executable, str(script), *arguments], cwd=REPO)


def facekd(*args: str, file_size_limit: int | None = None, **popen: object) -> subprocess.CompletedProcess:
    """Run the real `facekd` command line, optionally under RLIMIT_FSIZE (set in the child only)."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "stages.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size if file_size_limit else None,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), **popen,
    )


def output_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 1 (not a signal), exactly one line of output, naming what it should."""
    lines = output_lines(result)
    assert result.returncode == 1, (result.returncode, lines)
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_rerun_gives_the_reference_store(params: Path, store: Path, reference_store: Path) -> None:
    """Once the fault is gone, `facekd embed` again succeeds with the bytes of an uninterrupted run."""
    rerun = facekd("embed", "--params", str(params), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert store.read_bytes() == reference_store.read_bytes()


def write_params(path: Path, faces: Path, teacher: Path, out: Path, **embed_changes: object) -> Path:
    embed_section = {
        "dataset": str(faces), "dataset_format": "auto", "teacher": str(teacher),
        "preprocessing": {"channel_order": "rgb", "mean": 127.5, "std": 127.5}, "resize": False, "device": "cpu",
        "workers": 0, "threads_per_worker": 1, "images_per_block": BLOCK_SIZE, "batch_size": 32, "on_corrupt": "error",
        "dtype": "float16", "store": str(out / "store.h5"),
    }
    embed_section.update(embed_changes)
    index_section = {
        "store": str(out / "store.h5"), "out": str(out / "index.faiss"), "knn": str(out / "knn.h5"), "view": "image",
        "factory": "Flat", "train_sample": 1000, "nprobe": 4, "ef_search": 16, "knn_k": 5, "rows_per_search": 16,
        "threads": 1, "device": "cpu", "seed": 0,
    }
    mine_section = {
        "store": str(out / "store.h5"), "knn": str(out / "knn.h5"), "hard_negatives_per_anchor": 3,
        "hard_positives_per_anchor": 2, "suspicious_threshold": 0.7, "histogram_bins": 10, "rows_per_block": 16,
        "out": str(out / "pairs.h5"), "summary": str(out / "summary.json"), "histogram": str(out / "histogram.csv"),
        "suspicious": str(out / "suspicious.csv"),
    }
    path.write_text(yaml.safe_dump({"embed": embed_section, "index": index_section, "mine": mine_section}))
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_face_folder(tmp_path_factory.mktemp("fault_faces") / "faces", identities=4, images=10)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_net: TinyFaceNet) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("fault_teacher") / "tiny.onnx", tiny_net)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, faces: Path, teacher: Path) -> Path:
    """Store, index, kNN file and pair table of an uninterrupted run, through the real command line."""
    out = tmp_path_factory.mktemp("reference")
    params = write_params(out / "params.yaml", faces, teacher, out)
    for stage in ("embed", "index", "mine"):
        result = facekd(stage, "--params", str(params), "--quiet")
        assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def reference_in_process(tmp_path_factory: pytest.TempPathFactory, faces: Path, teacher: Path) -> Path:
    """The uninterrupted store as `embed_dataset` (and the killable script) writes it: no dataset_root attribute."""
    path = tmp_path_factory.mktemp("reference_in_process") / "store.h5"
    embed_here(ImageFolderDataset(faces), str(teacher), path, images_per_block=BLOCK_SIZE)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if ".partial" in path.name)


# --- file-size limit (RLIMIT_FSIZE) and full disk ---------------------------------------------


@pytest.mark.parametrize("limit", [1024, 8192, 32768])
def test_file_size_limit_on_embed_is_one_line_and_the_rerun_is_identical(
    tmp_path: Path, faces: Path, teacher: Path, reference: Path, limit: int
) -> None:
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    limited = facekd("embed", "--params", str(params), "--quiet", file_size_limit=limit)
    assert_one_line_error(limited, "store.h5", "cannot write (File too large")
    assert not (tmp_path / "store.h5").exists()
    assert_rerun_gives_the_reference_store(params, tmp_path / "store.h5", reference / "store.h5")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("stage", "output"), [("index", "index.faiss"), ("index", "knn.h5"), ("mine", "pairs.h5")])
def test_file_size_limit_on_index_and_mine_publishes_nothing(
    tmp_path: Path, reference: Path, faces: Path, teacher: Path, stage: str, output: str
) -> None:
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    (tmp_path / "store.h5").write_bytes((reference / "store.h5").read_bytes())
    for earlier in ("index", "mine")[: ("index", "mine").index(stage) + 1]:
        assert facekd(earlier, "--params", str(params), "--quiet").returncode == 0
    uninterrupted = (tmp_path / output).read_bytes()
    (tmp_path / output).unlink()
    # index: a limit below the index file, or one that lets the index through but not the kNN file
    limit = (tmp_path / "index.faiss").stat().st_size + 64 if output == "knn.h5" else len(uninterrupted) // 2
    limited = facekd(stage, "--params", str(params), "--quiet", file_size_limit=limit)
    assert_one_line_error(limited, output, "cannot write (File too large")
    assert not (tmp_path / output).exists() and leftovers(tmp_path) == []
    rerun = facekd(stage, "--params", str(params), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / output).read_bytes() == uninterrupted


def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real small file system (tmpfs), where this process may mount one."""
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """128 KiB: the size the store overflowed in the report this suite answers."""
    yield from mounted_tmpfs(tmp_path / "tmpfs", "128k")


@pytest.fixture
def tmpfs_for_pairs(tmp_path: Path) -> Iterator[Path]:
    """4 MiB: room for a pair table (its first chunks alone take 1.7 MB)."""
    yield from mounted_tmpfs(tmp_path / "tmpfs", "4m")


def fill(directory: Path, leave_bytes: int) -> Path:
    """Fill a file system until about `leave_bytes` are free."""
    filler = directory / "filler"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    filler.write_bytes(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_full_disk_on_embed_is_one_line_and_the_rerun_is_identical(
    small_tmpfs: Path, faces: Path, teacher: Path, reference: Path
) -> None:
    params = write_params(small_tmpfs.parent / "params.yaml", faces, teacher, small_tmpfs)
    filler = fill(small_tmpfs, leave_bytes=8192)
    full = facekd("embed", "--params", str(params), "--quiet")
    assert_one_line_error(full, "store.h5", "cannot write (No space left on device")
    assert not (small_tmpfs / "store.h5").exists() and leftovers(small_tmpfs) == []
    filler.unlink()
    assert_rerun_gives_the_reference_store(params, small_tmpfs / "store.h5", reference / "store.h5")


def test_disk_filling_up_during_embed_does_not_stop_it(
    small_tmpfs: Path, faces: Path, teacher: Path, reference_in_process: Path
) -> None:
    """The store's space is reserved when it is created, so another file filling the disk later cannot break it."""
    store = small_tmpfs / "store.h5"
    gate = small_tmpfs.parent / "gate"
    process = slow_embed(small_tmpfs.parent, faces, teacher, store, delay=0.0, gate=gate)
    wait_for_blocks(process, journal_path(store), 2)
    fill(small_tmpfs, leave_bytes=0)
    gate.touch()
    assert process.wait(timeout=120) == 0
    assert store.read_bytes() == reference_in_process.read_bytes()


def test_disk_full_at_the_first_journal_line_keeps_a_resumable_partial(
    small_tmpfs: Path, faces: Path, teacher: Path, reference: Path
) -> None:
    """The store's space is reserved, but its journal's first line needs a page the full disk no longer has."""
    params = write_params(small_tmpfs.parent / "params.yaml", faces, teacher, small_tmpfs)
    script, gate = small_tmpfs.parent / "gated_cli.py", small_tmpfs.parent / "gate"
    script.write_text(GATED_CLI)
    process = subprocess.Popen(
        [sys.executable, str(script), str(gate), "embed", "--params", str(params), "--quiet"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    journal = journal_path(small_tmpfs / "store.h5")
    while not journal.exists() and process.poll() is None:
        time.sleep(0.01)
    filler = fill(small_tmpfs, leave_bytes=0)
    gate.touch()
    stdout, stderr = process.communicate(timeout=120)
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert process.returncode == 1 and len(lines) == 1, (process.returncode, lines)
    assert "store.h5.partial: cannot write (No space left on device)" in lines[0]
    assert "rerun to resume" in lines[0]
    assert partial_path(small_tmpfs / "store.h5").exists() and not (small_tmpfs / "store.h5").exists()
    filler.unlink()
    assert_rerun_gives_the_reference_store(params, small_tmpfs / "store.h5", reference / "store.h5")


def test_full_disk_on_index_and_mine_is_one_line(
    tmpfs_for_pairs: Path, faces: Path, teacher: Path, reference: Path
) -> None:
    params = write_params(tmpfs_for_pairs.parent / "params.yaml", faces, teacher, tmpfs_for_pairs)
    (tmpfs_for_pairs / "store.h5").write_bytes((reference / "store.h5").read_bytes())
    filler = fill(tmpfs_for_pairs, leave_bytes=4096)
    assert_one_line_error(facekd("index", "--params", str(params), "--quiet"), "cannot write (No space left on device")
    assert not (tmpfs_for_pairs / "index.faiss").exists() and not (tmpfs_for_pairs / "knn.h5").exists()
    assert leftovers(tmpfs_for_pairs) == []
    filler.unlink()
    assert facekd("index", "--params", str(params), "--quiet").returncode == 0
    filler = fill(tmpfs_for_pairs, leave_bytes=4096)
    assert_one_line_error(facekd("mine", "--params", str(params), "--quiet"), "pairs.h5", "cannot write (No space left on device")
    assert not (tmpfs_for_pairs / "pairs.h5").exists() and leftovers(tmpfs_for_pairs) == []
    filler.unlink()
    assert facekd("mine", "--params", str(params), "--quiet").returncode == 0
    assert (tmpfs_for_pairs / "pairs.h5").read_bytes() == (reference / "pairs.h5").read_bytes()


# --- one writer at a time ----------------------------------------------------------------------


def wait_for_blocks(process: subprocess.Popen, journal: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= count:
            return
        time.sleep(0.005)
    raise AssertionError(f"the run ended (status {process.poll()}) before {count} blocks were written")


def test_second_embed_on_one_store_is_refused_with_the_first_ones_pid(
    tmp_path: Path, faces: Path, teacher: Path, reference_in_process: Path
) -> None:
    store = tmp_path / "store.h5"
    # a published store of other settings: readers keep reading it during the rewrite
    embed_here(ImageFolderDataset(faces), teacher, store, images_per_block=BLOCK_SIZE, dtype="float32")
    gate = tmp_path / "gate"
    first = slow_embed(tmp_path, faces, teacher, store, delay=0.0, gate=gate)
    wait_for_blocks(first, journal_path(store), 2)
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    second = facekd("embed", "--params", str(params), "--quiet")
    assert_one_line_error(second, "store.h5", f"(PID {first.pid}) is writing it")
    with EmbeddingStore(store) as published:
        published.verify()
        assert published.provenance["embedding_dtype"] == "float32"
    gate.touch()
    assert first.wait(timeout=120) == 0
    assert store.read_bytes() == reference_in_process.read_bytes()


def test_output_lock_refuses_a_second_process_and_frees_on_death(tmp_path: Path) -> None:
    output = tmp_path / "pairs.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pipeline.files import exclusive_writer
            with exclusive_writer({str(output)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(FacekdError, match=rf"pairs\.h5: another facekd process \(PID {holder.pid}\) is writing it"):
        with exclusive_writer(output):
            pass
    holder.kill()
    holder.wait()
    with exclusive_writer(output):  # the kernel released the dead holder's lock
        pass


# --- finite values only ------------------------------------------------------------------------


class Scaled(nn.Module):
    """A teacher whose outputs are the tiny network's times `factor` (1e6: beyond float16's 65504; NaN)."""

    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net = net
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


def test_float16_overflow_is_refused_with_the_float32_hint(
    tmp_path: Path, faces: Path, tiny_net: TinyFaceNet
) -> None:
    teacher = export_tiny_onnx(tmp_path / "overflowing.onnx", Scaled(tiny_net, 1e6))
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    refused = facekd("embed", "--params", str(params), "--quiet")
    line = assert_one_line_error(refused, "exceed the range of the store's dtype float16", "set `embed.dtype: float32`")
    assert "4 images (person00/000.jpg, person00/001.jpg" in line
    assert not (tmp_path / "store.h5").exists()
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path, dtype="float32")
    assert facekd("embed", "--params", str(params), "--quiet").returncode == 0


def test_teacher_returning_nan_is_refused_naming_the_images(tmp_path: Path, faces: Path, tiny_net: TinyFaceNet) -> None:
    teacher = export_tiny_onnx(tmp_path / "nan.onnx", Scaled(tiny_net, float("nan")))
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path, dtype="float32")
    refused = facekd("embed", "--params", str(params), "--quiet")
    assert_one_line_error(refused, "the teacher returned NaN or infinite embeddings for 4 images (person00/000.jpg")
    assert not (tmp_path / "store.h5").exists()


PROVENANCE = {
    "teacher_sha256": "a" * 64, "input_spec": {}, "preprocessing": {}, "resize": False,
    "dataset_kind": "image_folder", "dataset_fingerprint": "f" * 64,
}


def handmade_store(path: Path, poison: dict[int, float]) -> Path:
    """12 images of 3 identities, unit-ish embeddings; rows in `poison` set to that value (NaN, inf)."""
    labels = np.repeat(np.arange(3), 4)
    keys = [f"id{label}/{row:02d}.jpg" for row, label in enumerate(labels)]
    writer = StoreWriter(path, PROVENANCE, labels, keys, ["id0", "id1", "id2"], embedding_dim=8, block_size=4, embedding_dtype="float16")
    embeddings = np.random.default_rng(0).normal(size=(12, 2, 8)).astype(np.float32)
    for row, value in poison.items():
        embeddings[row, 0, 3] = value
    for block in range(3):
        rows = slice(4 * block, 4 * block + 4)
        norms = np.linalg.norm(embeddings[rows], axis=2).astype(np.float32)
        writer.write_block(block, embeddings[rows].astype(np.float16), norms, np.zeros(4, np.uint8))
    writer.finalize()
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_index_and_mine_refuse_non_finite_rows_naming_them(tmp_path: Path, value: float) -> None:
    clean = handmade_store(tmp_path / "clean.h5", {})
    poisoned = handmade_store(tmp_path / "poisoned.h5", {2: value, 9: value})
    message = r"poisoned\.h5: 2 images have non-finite \(NaN or infinite\) embeddings: id0/02\.jpg, id2/09\.jpg"
    with EmbeddingStore(poisoned) as store, pytest.raises(FacekdError, match=message):
        build_index(store, index_config(tmp_path), progress=False)
    assert not (tmp_path / "index.faiss").exists()
    with EmbeddingStore(clean) as store:  # same provenance: the kNN file would be accepted for the poisoned store
        config = index_config(tmp_path, knn_k=3, device="cpu")
        build_index(store, config, progress=False)
        search_knn(store, config, progress=False)
    with EmbeddingStore(poisoned) as store, pytest.raises(FacekdError, match=message):
        mine_pairs(store, mine_config(tmp_path, hard_negatives_per_anchor=2), progress=False)
    assert not (tmp_path / "pairs.h5").exists()


# --- damaged files are detected ----------------------------------------------------------------


def flip_bytes(path: Path, offset: int, count: int = 8) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        original = stream.read(count)
        stream.seek(offset)
        stream.write(bytes(byte ^ 0xFF for byte in original))


def chunk_offset(path: Path, dataset: str, row: int) -> int:
    """Where in the file the chunk holding `row` of `dataset` starts."""
    with h5py.File(path, "r") as h5file:
        data = h5file[dataset]
        return data.id.get_chunk_info_by_coord((row,) + (0,) * (data.ndim - 1)).byte_offset


def test_damaged_store_is_caught_by_verify_and_embedded_again(
    tmp_path: Path, faces: Path, teacher: Path, reference: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    store = tmp_path / "store.h5"
    store.write_bytes((reference / "store.h5").read_bytes())
    assert facekd("store", "info", "--verify", str(store)).returncode == 0
    flip_bytes(store, chunk_offset(store, "embeddings", 20) + 10)
    assert_one_line_error(facekd("store", "info", "--verify", str(store)), "store.h5: content does not match its checksum")
    rerun = facekd("embed", "--params", str(params), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "content does not match its checksum" in rerun.stderr and "embedding again" in rerun.stderr
    assert store.read_bytes() == (reference / "store.h5").read_bytes()


def test_damaged_block_of_a_partial_store_is_embedded_again(tmp_path: Path) -> None:
    store = tmp_path / "store.h5"
    labels, keys = np.zeros(8, np.int64), [f"id0/{row}.jpg" for row in range(8)]
    writer = StoreWriter(store, PROVENANCE, labels, keys, ["id0"], embedding_dim=4, block_size=4, embedding_dtype="float16")
    for block in range(2):
        writer.write_block(block, np.ones((4, 2, 4), np.float16), np.ones((4, 2), np.float32), np.zeros(4, np.uint8))
    writer.close()  # a crash before publication: both blocks are in the journal
    flip_bytes(partial_path(store), chunk_offset(partial_path(store), "embeddings", 4))
    resumed = StoreWriter(store, PROVENANCE, labels, keys, ["id0"], embedding_dim=4, block_size=4, embedding_dtype="float16")
    assert resumed.resumed_blocks == {0} and resumed.pending_blocks == [1]
    resumed.close()


def test_damaged_knn_file_is_refused_by_mine(tmp_path: Path, faces: Path, teacher: Path, reference: Path) -> None:
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path)
    for name in ("store.h5", "index.faiss", "index.faiss.json", "knn.h5"):
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    flip_bytes(tmp_path / "knn.h5", chunk_offset(tmp_path / "knn.h5", "similarities", 0) + 40)
    assert_one_line_error(facekd("mine", "--params", str(params), "--quiet"), "knn.h5: content does not match its checksum")
    assert not (tmp_path / "pairs.h5").exists()


def test_damaged_pair_table_fails_verification(tmp_path: Path, reference: Path) -> None:
    pairs = tmp_path / "pairs.h5"
    pairs.write_bytes((reference / "pairs.h5").read_bytes())
    with PairTable(pairs) as table:
        table.verify()
    flip_bytes(pairs, chunk_offset(pairs, "similarity", 0) + 4)
    with PairTable(pairs) as table, pytest.raises(FacekdError, match=r"pairs\.h5: content does not match its checksum"):
        table.verify()


@pytest.mark.parametrize("where", ["middle", "end"])
def test_damaged_index_file_is_refused_on_load(tmp_path: Path, reference: Path, where: str) -> None:
    index = tmp_path / "index.faiss"
    index.write_bytes((reference / "index.faiss").read_bytes())
    metadata_path(index).write_bytes(metadata_path(reference / "index.faiss").read_bytes())
    size = index.stat().st_size
    flip_bytes(index, size // 2 if where == "middle" else size - 8)
    with EmbeddingStore(reference / "store.h5") as store:
        with pytest.raises(FacekdError, match=r"index\.faiss: content does not match the checksum in index\.faiss\.json"):
            load_index(index, store)


def test_unreadable_index_file_with_a_matching_checksum_is_one_clear_error(tmp_path: Path, reference: Path) -> None:
    """Metadata written for a file FAISS cannot read (its RuntimeError must not escape)."""
    index = tmp_path / "index.faiss"
    index.write_bytes((reference / "index.faiss").read_bytes()[:100])
    metadata = json.loads(metadata_path(reference / "index.faiss").read_text())
    metadata_path(index).write_text(json.dumps(dict(metadata, index_checksum=file_checksum(index))))
    with EmbeddingStore(reference / "store.h5") as store:
        with pytest.raises(FacekdError, match=r"index\.faiss: not a readable FAISS index"):
            load_index(index, store)


# --- Ctrl-C under dask, kill -9 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def many_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images that a run at one image per block lasts well past the signal, even on a loaded machine."""
    return write_face_folder(tmp_path_factory.mktemp("many_faces") / "faces", identities=10, images=40)


@pytest.fixture(scope="module")
def one_image_blocks(tmp_path_factory: pytest.TempPathFactory, many_faces: Path, teacher: Path) -> Path:
    """The uninterrupted store of `many_faces` with one image per block (enough blocks to interrupt a run)."""
    out = tmp_path_factory.mktemp("one_image_blocks")
    params = write_params(out / "params.yaml", many_faces, teacher, out, images_per_block=1)
    assert facekd("embed", "--params", str(params), "--quiet").returncode == 0
    return out / "store.h5"


def test_ctrl_c_on_dask_embed_is_one_line_and_resumes_to_identical_bytes(
    tmp_path: Path, many_faces: Path, teacher: Path, one_image_blocks: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", many_faces, teacher, tmp_path, workers=2, images_per_block=1)
    store = tmp_path / "store.h5"
    process = subprocess.Popen(  # its own process group, which a terminal's Ctrl-C reaches as a whole
        [sys.executable, "-m", "stages.cli", "embed", "--params", str(params), "--quiet"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        # As in a terminal: a test run started in the background (CI) inherits SIGINT ignored, and a
        # Python started with SIGINT ignored never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_blocks(process, journal_path(store), 3)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 1 and len(lines) <= 2, lines
    assert "interrupted" in lines[-1] and "run `facekd embed` again to resume" in lines[-1], lines
    assert partial_path(store).exists() and not store.exists()
    rerun = facekd("embed", "--params", str(params), "--quiet")
    assert rerun.returncode == 0 and "resumed" in rerun.stdout, rerun.stdout + rerun.stderr
    assert store.read_bytes() == one_image_blocks.read_bytes()


def test_corrupt_image_under_dask_is_only_the_one_line_error(tmp_path: Path, teacher: Path) -> None:
    faces = write_face_folder(tmp_path / "faces", identities=2, images=4)
    (faces / "person01" / "002.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    params = write_params(tmp_path / "params.yaml", faces, teacher, tmp_path, workers=2)
    failed = facekd("embed", "--params", str(params), "--quiet")
    assert_one_line_error(failed, "person01/002.jpg: cannot decode image")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_point_then_rerun_gives_identical_bytes(
    tmp_path: Path, faces: Path, teacher: Path, reference_in_process: Path, seed: int
) -> None:
    rng = random.Random(seed)
    store = tmp_path / "store.h5"
    process = slow_embed(tmp_path, faces, teacher, store, delay=0.02)
    wait_for_blocks(process, journal_path(store), rng.randint(0, 8))
    time.sleep(rng.uniform(0, 0.08))  # anywhere within a block, its journal line or the publication
    process.send_signal(signal.SIGKILL)
    process.wait()
    embed_here(ImageFolderDataset(faces), str(teacher), store, images_per_block=BLOCK_SIZE)
    assert store.read_bytes() == reference_in_process.read_bytes()
    assert leftovers(tmp_path) == []
