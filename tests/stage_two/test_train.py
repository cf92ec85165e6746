"""Stage two with real components: images, a store from a real ONNX teacher, real training and export."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.stage_two.checkpoint import read_checkpoint
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.errors import FacekdError
from pipeline.stage_two.sampler import RandomBatchSampler
from pipeline.face_model import OnnxFaceModel
from pipeline.stage_two.schedule import learning_rate
from pipeline.stage_two.config import OptimConfig, TrainConfig
from pipeline.stage_two.train import CHECKPOINT, METRICS, MODEL, _hash_int64, train
from pipeline.stage_two.training_data import TeacherTargets, decode_in_memory
from tests.ranks import free_port, run_forked_ranks
from tests.stage_one.stores import embed_here
from tests.stage_two.students import TINY_STUDENT, student_params
from tests.tiny_faces import write_face_folder

# Scripts run in subprocesses import tests.stage_two.students from the repository root.
REPO_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def test_learning_rate_schedules() -> None:
    poly = OptimConfig(lr=0.1, warmup_epochs=1, power=2)
    rates = [learning_rate(poly, 0.1, step, steps_per_epoch=10, epochs=5) for step in range(50)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert rates[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[30] == pytest.approx(0.1 * (1 - 2 / 4) ** 2)
    step = OptimConfig(lr=0.1, schedule="step", warmup_epochs=0, milestones=(2, 4), gamma=0.1)
    assert [learning_rate(step, 0.1, s, 10, 5) for s in (0, 19, 20, 39, 40)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_student_trains_and_exports_a_matching_onnx(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    result = train(TINY_STUDENT, dataset, tmp_path / "student", targets=TeacherTargets(tiny_store), progress=False)
    history = read_checkpoint(tmp_path / "student" / CHECKPOINT)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert {"margin", "iled", "rpsd", "loss"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"], "training did not reduce the loss"
    assert result.metrics["scaled_lr"] == pytest.approx(0.5 * 8 / 512) and result.metrics["world_size"] == 1
    assert (tmp_path / "student" / METRICS).is_file() and (tmp_path / "student" / "train_log.csv").is_file()
    student = OnnxFaceModel(tmp_path / "student" / MODEL)  # the export runs in ONNX Runtime at any batch size
    assert student.embedding_dim == 8
    assert student.embed(np.stack([dataset.load(i) for i in range(5)])).shape == (5, 8)


def test_distillation_without_targets_is_refused(tmp_path: Path, face_folder: Path) -> None:
    with pytest.raises(FacekdError, match="need the teacher embeddings"):
        train(TINY_STUDENT, ImageFolderDataset(face_folder), tmp_path, progress=False)


def test_pairs_sampler_needs_the_pair_table(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    config = TINY_STUDENT.model_copy(update={"sampler": "pairs"})
    with pytest.raises(FacekdError, match="sampler 'pairs' needs the mined pair table"):
        train(config, ImageFolderDataset(face_folder), tmp_path, targets=TeacherTargets(tiny_store), progress=False)


KILLABLE_TRAIN = textwrap.dedent(
    """
    import sys, time
    from pipeline.data.image_folder import ImageFolderDataset
    from pipeline.stage_two.train import train
    from pipeline.stage_two.training_data import TeacherTargets
    from tests.stage_two.students import TINY_STUDENT

    class SlowFolder(ImageFolderDataset):
        def load(self, index):
            time.sleep(float(sys.argv[4]))
            return super().load(index)

    if __name__ == "__main__":
        folder, store, out = sys.argv[1:4]
        # decoded per sample (not once into memory), so that every epoch is slow enough to be killed in
        train(TINY_STUDENT, SlowFolder(folder), out, targets=TeacherTargets(store), images_memory_bytes=0, progress=False)
    """
)


def test_kill_mid_epoch_then_resume_gives_the_uninterrupted_weights(
    tmp_path: Path, face_folder: Path, tiny_store: Path
) -> None:
    script = tmp_path / "killable_train.py"
    script.write_text(KILLABLE_TRAIN)
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(script), str(face_folder), str(tiny_store), str(out), "0.05"], env=REPO_ENV
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not (out / CHECKPOINT).exists():
        time.sleep(0.02)
    time.sleep(0.6)  # into the second epoch (each epoch loads 40 images at 0.05 s)
    assert process.poll() is None, "training finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert not (out / MODEL).exists()

    dataset = ImageFolderDataset(face_folder)
    resumed = train(TINY_STUDENT, dataset, out, targets=TeacherTargets(tiny_store), progress=False)
    assert resumed.resumed_from_epoch == 1
    uninterrupted = train(TINY_STUDENT, dataset, tmp_path / "whole", targets=TeacherTargets(tiny_store), progress=False)
    assert uninterrupted.resumed_from_epoch == 0
    final = read_checkpoint(out / CHECKPOINT)["model"]
    reference = read_checkpoint(tmp_path / "whole" / CHECKPOINT)["model"]
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.equal(final[name], reference[name]), f"{name} differs after resuming"


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    one_epoch = TINY_STUDENT.model_copy(update={"epochs": 1})
    train(one_epoch, dataset, tmp_path, targets=TeacherTargets(tiny_store), progress=False)
    changed = one_epoch.model_copy(update={"seed": 1})
    assert train(changed, dataset, tmp_path, targets=TeacherTargets(tiny_store), progress=False).resumed_from_epoch == 0


def test_rerun_of_a_finished_run_rewrites_every_output(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    """DVC removes a stage's outputs but keeps its persisted checkpoint before running it again."""
    dataset = ImageFolderDataset(face_folder)
    one_epoch = TINY_STUDENT.model_copy(update={"epochs": 1})
    train(one_epoch, dataset, tmp_path, targets=TeacherTargets(tiny_store), progress=False)
    log = (tmp_path / "train_log.csv").read_text()
    for name in (MODEL, METRICS, "train_log.csv"):
        (tmp_path / name).unlink()
    rerun = train(one_epoch, dataset, tmp_path, targets=TeacherTargets(tiny_store), progress=False)
    assert rerun.resumed_from_epoch == 1
    assert (tmp_path / "train_log.csv").read_text() == log
    assert (tmp_path / MODEL).is_file() and (tmp_path / METRICS).is_file()


def test_two_process_gloo_ddp_fills_the_bank_from_both_ranks(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    """`torchrun --nproc_per_node=2 facekd train ...` as the README shows it (gloo on CPU)."""
    # 42 images, global batch 8: 5 steps, 40 samples an epoch; a bank of 40 holds exactly the last epoch.
    params = student_params(tmp_path, face_folder, tiny_store, epochs=2, distillation={"rpsd_bank_size": 40})
    bin_dir = Path(sys.executable).parent
    completed = subprocess.run(
        [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node=2", str(bin_dir / "facekd"),
         "train", "--student", "ddp", "--params", str(params), "--quiet"],
        capture_output=True, text=True, timeout=600, env={**REPO_ENV, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = tmp_path / "students" / "ddp"
    checkpoint = read_checkpoint(out / CHECKPOINT)
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 2
    bank_indices = sorted(checkpoint["model"]["distiller.memory.dataset_indices"].tolist())
    usable = np.arange(42)
    per_rank = []
    for rank in (0, 1):
        sampler = RandomBatchSampler(usable, 8, seed=0, rank=rank, world_size=2)
        sampler.set_epoch(1)
        per_rank.append([index for batch in sampler for index, _flip in batch])
    assert bank_indices == sorted(per_rank[0] + per_rank[1])
    assert set(per_rank[1]) - set(per_rank[0]), "rank 1 contributed nothing of its own"
    metrics = (out / METRICS).read_text()
    assert '"world_size": 2' in metrics and '"global_batch_size": 8' in metrics


def test_mapped_targets_and_loader_workers_give_the_in_memory_weights(
    tmp_path: Path, face_folder: Path, tiny_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Targets memory-mapped and images decoded per sample inside 2 DataLoader workers (or in the
    training process) = targets read once into memory and images decoded once (the default). Only
    decoding per sample in the training process is warned about: it stalls every step."""
    mapped = TeacherTargets(tiny_store, memory_budget_bytes=0)
    assert mapped.array is None
    in_memory = TeacherTargets(tiny_store)
    np.testing.assert_array_equal(mapped.get(5, 1), in_memory.get(5, 1))
    dataset = ImageFolderDataset(face_folder)
    one_epoch = TINY_STUDENT.model_copy(update={"epochs": 1})
    runs = {"memory": (0, 1 << 30), "workers": (2, 0), "in_process": (0, 0)}
    warned = {}
    for run, (workers, images_memory_bytes) in runs.items():
        caplog.clear()
        train(
            one_epoch.model_copy(update={"num_workers": workers}), dataset, tmp_path / run,
            targets=in_memory if run == "memory" else mapped, images_memory_bytes=images_memory_bytes, progress=False,
        )
        warned[run] = "num_workers >= 1 does that for the next batches" in caplog.text
    assert warned == {"memory": False, "workers": False, "in_process": True}
    reference = read_checkpoint(tmp_path / "memory" / CHECKPOINT)["model"]
    for run in ("workers", "in_process"):
        weights = read_checkpoint(tmp_path / run / CHECKPOINT)["model"]
        for name in reference:
            assert torch.equal(reference[name], weights[name]), f"{name} differs in run {run}"


def test_images_decoded_in_memory_only_when_they_fit(tmp_path: Path, face_folder: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    usable = np.arange(1, len(dataset))
    images = decode_in_memory(dataset, usable, 1 << 30)
    assert images is not None and images.shape == (len(dataset), *dataset.load(0).shape)
    np.testing.assert_array_equal(images[3], dataset.load(3))
    assert not images[0].any()  # not usable: never decoded
    assert decode_in_memory(dataset, usable, images.nbytes - 1) is None


def test_images_of_another_size_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    for identity, size in (("a", 16), ("b", 20)):
        (folder / identity).mkdir(parents=True)
        Image.new("RGB", (size, size)).save(folder / identity / "0.png")
    with pytest.raises(FacekdError, match=r"b/0\.png: image is 20x20x3; expected 16x16x3"):
        decode_in_memory(ImageFolderDataset(folder), np.arange(2), 1 << 30)


def test_mapped_targets_equal_the_store_in_every_chunk(tmp_path: Path, face_folder: Path, tiny_teacher: Path) -> None:
    """42 images in chunks of 16 rows: the map finds every chunk, the partial last one included."""
    import h5py

    store = tmp_path / "store.h5"
    embed_here(ImageFolderDataset(face_folder), str(tiny_teacher), store, images_per_block=16)
    with h5py.File(store, "r") as h5file:
        expected = h5file["embeddings"][:]
        assert h5file["embeddings"].chunks[0] == 16
    mapped = TeacherTargets(store, memory_budget_bytes=0)
    assert mapped.array is None
    for index in range(len(expected)):
        for view in (0, 1):
            np.testing.assert_array_equal(mapped.get(index, view), expected[index, view])

    compressed = tmp_path / "compressed.h5"  # not as facekd writes stores: refused with a way out
    with h5py.File(store, "r") as source, h5py.File(compressed, "w") as target:
        for name, value in source.attrs.items():
            target.attrs[name] = value
        target.create_dataset("embeddings", data=expected, chunks=(16, 2, expected.shape[2]), compression="gzip")
    with pytest.raises(FacekdError, match="compressed.h5: 'embeddings' is not stored in uncompressed row chunks"):
        TeacherTargets(compressed, memory_budget_bytes=0)
    assert TeacherTargets(compressed).array is not None  # small enough to read into memory


def test_cli_train_reports_unknown_students_and_keys(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    from click.testing import CliRunner

    from stages.cli import cli

    params = student_params(tmp_path, face_folder, tiny_store)
    missing = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "nobody"])
    assert missing.exit_code == 1 and "students has no student 'nobody' (known: ddp)" in missing.output
    params = student_params(tmp_path, face_folder, tiny_store, distillation={"rpsd_bank": 4})
    typo = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "ddp"])
    assert typo.exit_code == 1 and "students.ddp.distillation.rpsd_bank: 4 — unknown key" in typo.output
    assert "Traceback" not in typo.output


def test_pair_table_hash_in_chunks_equals_the_whole_copy() -> None:
    partners = np.random.default_rng(0).integers(0, 1 << 40, 1001)
    for array in (partners, partners.astype(np.int32), partners[::2]):
        chunked, whole = hashlib.sha256(), hashlib.sha256()
        _hash_int64(chunked, array, chunk=64)
        whole.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        assert chunked.hexdigest() == whole.hexdigest()


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ({"batch_size": 1}, r"students\.ddp\.batch_size: 1 — expected at least 2 \(BatchNorm needs 2 or more samples"),
        ({"batch_size": 7, "sampler": "pairs"}, r"students\.ddp\.batch_size: 7 — expected a multiple of 2 x world size \(2\): the pairs sampler"),
    ],
)
def test_cli_train_refuses_a_batch_too_small_or_odd(tmp_path: Path, face_folder: Path, student: dict, message: str) -> None:
    from click.testing import CliRunner

    from stages.cli import cli

    params = student_params(tmp_path, face_folder, tmp_path / "unused.h5", **student)
    result = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "ddp", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {params}: ") and re.search(message, result.output), result.output


def test_partial_fc_draws_are_seeded_and_checkpointed(tmp_path: Path) -> None:
    """Partial FC's class draws follow the seed and the step counter saved with the weights, so a
    resumed run (which loads them) draws what the uninterrupted run drew."""
    faces = write_face_folder(tmp_path / "faces", identities=20, images=2)
    config = TrainConfig(
        backbone="mobilefacenet", embedding_dim=8, width=0.25, epochs=2, batch_size=8, threads=1,
        margin_sample_rate=0.5, optim=OptimConfig(lr=0.5, warmup_epochs=0.5),
    )
    for run in ("first", "second"):
        train(config, ImageFolderDataset(faces), tmp_path / run, progress=False)
    first, second = (read_checkpoint(tmp_path / run / CHECKPOINT)["model"] for run in ("first", "second"))
    assert int(first["head.step"]) == 2 * (40 // 8)
    assert all(torch.equal(first[name], second[name]) for name in first)


class CrashingFolder(ImageFolderDataset):
    """Raises at its `crash_at`-th image load (0: never), as a run that dies in the middle of an epoch."""

    def __init__(self, root: Path, crash_at: int) -> None:
        super().__init__(root)
        self.crash_at, self.loads = crash_at, 0

    def load(self, index: int) -> np.ndarray:
        self.loads += 1
        if self.loads == self.crash_at:
            raise RuntimeError("the run dies here")
        return super().load(index)


def _train_rank(rank: int, port: int, config: TrainConfig, faces: Path, out: Path, crash_at: int) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = train(config, CrashingFolder(faces, crash_at), out, images_memory_bytes=0, progress=False)
    if rank == 0:
        (out / "resumed_from_epoch").write_text(str(result.resumed_from_epoch))


def _train_on_two_ranks(config: TrainConfig, faces: Path, out: Path, crash_at: int = 0) -> None:
    """`train` in 2 forked processes of one gloo group, as under `torchrun --nproc_per_node=2`."""
    run_forked_ranks(_train_rank, (free_port(), config, faces, out, crash_at), nprocs=2)


@pytest.mark.parametrize("sample_rate", [1.0, 0.3])
def test_two_rank_sharded_head_resumes_to_the_uninterrupted_weights(tmp_path: Path, sample_rate: float) -> None:
    """Over 2 ranks each holds half of the class centres (and their momentum: the optimizer's, or
    with Partial FC the head's own); the checkpoint holds them all, and a run that died in its
    second epoch resumes to the uninterrupted run's state."""
    faces = write_face_folder(tmp_path / "faces", identities=20, images=2)
    config = TrainConfig(
        backbone="mobilefacenet", embedding_dim=8, width=0.25, epochs=2, batch_size=8, threads=1,
        margin_sample_rate=sample_rate, optim=OptimConfig(lr=0.5, warmup_epochs=0.5),
    )
    # per rank: 1 load to read the image size, then 4 a step, 5 steps an epoch: the 30th is in epoch 2, step 3
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="the run dies here"):
        _train_on_two_ranks(config, faces, tmp_path / "resumed", crash_at=30)
    assert read_checkpoint(tmp_path / "resumed" / CHECKPOINT)["epoch"] == 1
    _train_on_two_ranks(config, faces, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "resumed_from_epoch").read_text() == "1"
    _train_on_two_ranks(config, faces, tmp_path / "whole")
    assert (tmp_path / "whole" / "resumed_from_epoch").read_text() == "0"

    resumed, whole = (read_checkpoint(tmp_path / run / CHECKPOINT) for run in ("resumed", "whole"))
    assert whole["world_size"] == 2 and whole["model"]["head.weight"].shape == (20, 8)
    assert resumed["model"].keys() == whole["model"].keys()
    for name in whole["model"]:
        assert torch.equal(resumed["model"][name], whole["model"][name]), f"{name} differs after resuming"
    optimizer_momentum = [state["momentum_buffer"] for state in whole["optimizer"]["state"].values()
                          if state["momentum_buffer"].shape == (20, 8)]
    if sample_rate == 1.0:
        assert len(optimizer_momentum) == 1, "the checkpoint lacks the momentum of every rank's centres"
        head_momentum = optimizer_momentum[0]
    else:  # Partial FC: the sampled centres' momentum is the head's buffer; the optimizer never sees them
        assert int(whole["model"]["head.step"]) == 2 * 5  # each rank sampled at every step
        assert not optimizer_momentum
        head_momentum = whole["model"]["head.momentum"]
    assert head_momentum.shape == (20, 8), "the checkpoint lacks the momentum of every rank's centres"
    assert torch.count_nonzero(head_momentum[:10].abs().sum(dim=1)) and torch.count_nonzero(head_momentum[10:].abs().sum(dim=1))
    for index, state in whole["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
