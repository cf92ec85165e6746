"""Fixtures for every test: a tiny ONNX teacher exported by torch, a tiny image-folder dataset."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_faces import TinyFaceNet, export_tiny_onnx, write_face_folder

# Tiny tensors run faster on one thread than split over two (and CI has two cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_net() -> TinyFaceNet:
    torch.manual_seed(0)
    return TinyFaceNet().eval()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_net: TinyFaceNet) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("teacher") / "tiny.onnx", tiny_net)


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_face_folder(tmp_path_factory.mktemp("faces") / "faces", identities=6, images=7)
