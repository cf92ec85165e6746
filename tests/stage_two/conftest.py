"""Fixtures of the stage-two tests: the teacher's embeddings of the tiny face folder."""
from pathlib import Path

import pytest

from pipeline.data.image_folder import ImageFolderDataset
from tests.stage_one.stores import embed_here


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, face_folder: Path, tiny_teacher: Path) -> Path:
    """The store `facekd embed` writes for `face_folder` with `tiny_teacher`: the targets students train on."""
    path = tmp_path_factory.mktemp("train") / "store.h5"
    embed_here(ImageFolderDataset(face_folder), str(tiny_teacher), path)
    return path
