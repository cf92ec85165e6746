"""Stage two under hostile or damaged inputs: checkpoints, stores with NaN rows, a diverging run.

Real components throughout: tiny trainings of a real student on a real store, real torch
checkpoints, `facekd train` through its command line. Each fault must be named to the user and
must never leave an output at a final path that looks complete.
"""
import hashlib
import io
import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.stage_two.checkpoint import FORMAT, read_checkpoint
from pipeline.data.image_folder import ImageFolderDataset
from pipeline.errors import FacekdError
from pipeline.face_model import OnnxFaceModel
from pipeline.stage_two.config import OptimConfig
from pipeline.stage_two.train import CHECKPOINT, MODEL, non_finite_loss_message, train
from pipeline.stage_two.training_data import TeacherTargets
from stages.cli import cli
from tests.stage_two.students import TINY_STUDENT, student_params

ONE_EPOCH = TINY_STUDENT.model_copy(update={"epochs": 1})


class Hostile:
    """Unpickling this runs a shell command that creates `marker`: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _flip_byte_in_tensor_data(path: Path) -> None:
    """Change one byte in the middle of the checkpoint's tensor data (the zip record `*/data/0`)."""
    with zipfile.ZipFile(path) as archive:
        (record,) = [info for info in archive.infolist() if info.filename.endswith("/data/0")]
    with open(path, "r+b") as stream:
        stream.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", stream.read(4))
        position = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        stream.seek(position)
        byte = stream.read(1)[0]
        stream.seek(position)
        stream.write(bytes([byte ^ 0x10]))


def test_hostile_checkpoint_is_refused_and_training_starts_over(
    tmp_path: Path, face_folder: Path, tiny_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, marker = tmp_path / "student", tmp_path / "pwned"
    out.mkdir()
    torch.save({"model": Hostile(marker)}, out / CHECKPOINT)
    shutil.copy(out / CHECKPOINT, tmp_path / "hostile.pt")
    with caplog.at_level(logging.WARNING):
        result = train(ONE_EPOCH, ImageFolderDataset(face_folder), out, targets=TeacherTargets(tiny_store), progress=False)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    assert f"{out / CHECKPOINT}: not a readable facekd checkpoint" in caplog.text and "training from scratch" in caplog.text
    assert result.resumed_from_epoch == 0 and read_checkpoint(out / CHECKPOINT)["epoch"] == 1
    torch.load(tmp_path / "hostile.pt", weights_only=False)  # the control: loaded as torch allows, it runs
    assert marker.exists()


def test_hostile_state_inside_a_well_formed_checkpoint_is_refused(tmp_path: Path) -> None:
    """The digest is no signature: an attacker can compute it. `weights_only` is what refuses the code."""
    marker, path = tmp_path / "pwned", tmp_path / CHECKPOINT
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "model": Hostile(marker)}, buffer)
    state = buffer.getvalue()
    wrapped_state = torch.frombuffer(bytearray(state), dtype=torch.uint8)
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(state).hexdigest(), "state": wrapped_state}, path)
    with pytest.raises(FacekdError, match=f"{path}: the training state cannot be read as data"):
        read_checkpoint(path)
    assert not marker.exists()


def test_changed_bytes_in_a_checkpoint_are_detected_and_not_resumed(
    tmp_path: Path, face_folder: Path, tiny_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset, out = ImageFolderDataset(face_folder), tmp_path / "student"
    train(ONE_EPOCH, dataset, out, targets=TeacherTargets(tiny_store), progress=False)
    intact = read_checkpoint(out / CHECKPOINT)
    _flip_byte_in_tensor_data(out / CHECKPOINT)
    with pytest.raises(FacekdError, match=f"{out / CHECKPOINT}: the training state's sha256 is"):
        read_checkpoint(out / CHECKPOINT)
    with caplog.at_level(logging.WARNING):
        rerun = train(ONE_EPOCH, dataset, out, targets=TeacherTargets(tiny_store), progress=False)
    assert rerun.resumed_from_epoch == 0 and str(out / CHECKPOINT) in caplog.text
    retrained = read_checkpoint(out / CHECKPOINT)["model"]
    for name, value in intact["model"].items():  # trained again from scratch: the same weights
        assert torch.equal(retrained[name], value), name


def test_store_with_nan_rows_is_refused_naming_them(tmp_path: Path, face_folder: Path, tiny_store: Path) -> None:
    store = tmp_path / "store.h5"
    shutil.copy(tiny_store, store)
    with h5py.File(store, "r+") as h5file:
        h5file["embeddings"][3, 0, 2] = np.nan
        h5file["embeddings"][7, 1, :] = np.inf
        h5file["embeddings"][5, 0, 0] = np.nan
        h5file["skipped"][5] = 1  # a skipped row is never trained on: not reported
        keys = [key.decode() for key in h5file["keys"][:]]
    params = student_params(tmp_path, face_folder, store)
    result = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "ddp", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{store}: 2 images have non-finite (NaN or infinite) embeddings: {keys[3]}, {keys[7]};" in result.output
    assert "learning rate" not in result.output
    assert not (tmp_path / "students").exists()


@pytest.mark.parametrize("margin_sample_rate", [1.0, 0.5])
def test_blow_up_on_the_last_step_publishes_nothing_and_a_sane_rerun_succeeds(
    tmp_path: Path, face_folder: Path, tiny_store: Path, margin_sample_rate: float
) -> None:
    """One step of batch 40 (42 images): the run's last optimizer step makes the weights' norm overflow
    (with Partial FC too, whose divergence check reads the updated centres, not all of them)."""
    absurd = {"epochs": 1, "batch_size": 40, "margin_sample_rate": margin_sample_rate,
              "optim": {"lr": 1e36, "warmup_epochs": 0}}
    params = student_params(tmp_path, face_folder, tiny_store, **absurd)
    out = tmp_path / "students" / "ddp"
    failed = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "ddp", "--quiet"])
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "the weights diverged in the update of epoch 1, step 0 (their norm became inf" in failed.output
    assert not (out / MODEL).exists() and not (out / CHECKPOINT).exists()

    sane = yaml.safe_load(params.read_text())
    sane["students"]["ddp"]["optim"]["lr"] = 0.5
    params.write_text(yaml.safe_dump(sane))
    rerun = CliRunner().invoke(cli, ["train", "--params", str(params), "--student", "ddp", "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    images = np.stack([ImageFolderDataset(face_folder).load(index) for index in range(3)])
    assert np.isfinite(OnnxFaceModel(out / MODEL, device="cpu").embed(images)).all()


def test_non_finite_loss_from_bad_targets_names_them_not_the_learning_rate(face_folder: Path) -> None:
    dataset = ImageFolderDataset(face_folder)
    terms = {"margin": torch.tensor(3.0), "iled": torch.tensor(float("nan"))}
    targets = torch.ones(4, 16)
    targets[2, 5] = float("nan")
    indices = torch.tensor([0, 9, 17, 30])
    message = non_finite_loss_message(dataset, terms, targets, indices, epoch=1, step=3, global_step=8)
    assert message.startswith("the loss became non-finite at epoch 2, step 3 (terms iled)")
    assert f"teacher embeddings of 1 samples ({dataset.source(17)}) are not finite" in message
    assert "learning rate" not in message
    assert "lower the learning rate" in non_finite_loss_message(dataset, terms, torch.ones(4, 16), indices, 1, 3, 8)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0])
def test_learning_rate_must_be_positive_and_finite(lr: float) -> None:
    with pytest.raises(FacekdError, match=f"lr: {lr} — expected a positive finite number"):
        OptimConfig(lr=lr)


def test_a_second_training_of_one_output_folder_is_refused_naming_the_first(
    tmp_path: Path, face_folder: Path, tiny_store: Path
) -> None:
    """Two runs writing one student's folder would interleave their checkpoints: the second is refused at once."""
    import subprocess
    import sys

    out = tmp_path / "student"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pipeline.files import exclusive_writer\n"
            f"with exclusive_writer({str(out / CHECKPOINT)!r}):\n"
            "    print('locked', flush=True); time.sleep(60)"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FacekdError, match=rf"another facekd process \(PID {holder.pid}\) is writing it"):
            train(ONE_EPOCH, ImageFolderDataset(face_folder), out, targets=TeacherTargets(tiny_store), progress=False)
        assert not (out / MODEL).exists() and not (out / CHECKPOINT).exists()
    finally:
        holder.kill()
        holder.wait()
    result = train(ONE_EPOCH, ImageFolderDataset(face_folder), out, targets=TeacherTargets(tiny_store), progress=False)
    assert (out / MODEL).is_file() and result.resumed_from_epoch == 0
