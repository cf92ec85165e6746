"""Images found by key without listing the dataset: the same bytes as the full readers, clear refusals."""
import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.open import open_keyed_images
from pipeline.data.recordio import RecordIODataset, write_recordio
from pipeline.errors import FacekdError
from tests.data.test_recordio import jpeg


def forbid_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on any listing of a folder fails the test: listing a million-image dataset is what is avoided."""

    def listing(*arguments, **options):
        raise AssertionError(f"listed {arguments}")

    monkeypatch.setattr(os, "scandir", listing)
    monkeypatch.setattr(os, "listdir", listing)


def test_image_folder_by_key_reads_what_the_dataset_reads_without_listing(face_folder: Path, monkeypatch) -> None:
    dataset = ImageFolderDataset(face_folder)
    expected = {key: (dataset.read_bytes(row), dataset.source(row)) for row, key in enumerate(dataset.keys)}
    forbid_listing(monkeypatch)
    images = open_keyed_images(face_folder, "image_folder")
    for key, (data, source) in expected.items():
        assert images.read_bytes(key) == data and images.source(key) == source
    assert (images.load(dataset.keys[3]) == dataset.load(3)).all()


def test_image_folder_by_key_refuses_keys_outside_the_folder_and_names_missing_files(tmp_path: Path, face_folder: Path) -> None:
    images = open_keyed_images(face_folder, "image_folder")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    for key in ("../secret.jpg", f"{face_folder.name}/../../secret.jpg", str(tmp_path / "secret.jpg"), "person01",
                "person01/../person02/000.jpg", "person01/000.jpg/x"):
        with pytest.raises(FacekdError, match="is not '<identity>/<file>' inside the dataset folder"):
            images.read_bytes(key)
    with pytest.raises(FacekdError, match=rf"{face_folder}/person01/999\.jpg: image not found \(key 'person01/999\.jpg'"):
        images.source("person01/999.jpg")


def test_a_moved_dataset_names_where_it_looked(tmp_path: Path, face_folder: Path) -> None:
    moved = shutil.copytree(face_folder, tmp_path / "faces")
    images = open_keyed_images(moved)
    shutil.move(moved, tmp_path / "elsewhere")
    with pytest.raises(FacekdError, match=rf"{moved}/person01/000\.jpg: image not found"):
        images.load("person01/000.jpg")
    with pytest.raises(FacekdError, match=rf"{moved}: dataset not found"):
        open_keyed_images(moved)


def test_recordio_by_key_reads_only_the_wanted_records(tmp_path: Path) -> None:
    samples = [(label, jpeg((40 * label, 10 * index, 0))) for index, label in enumerate([0, 0, 1, 1, 2])]
    write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", samples)
    dataset = RecordIODataset(tmp_path / "train.rec")
    images = open_keyed_images(tmp_path)
    for row, key in enumerate(dataset.keys):
        assert images.read_bytes(key) == dataset.read_bytes(row) and images.source(key) == dataset.source(row)
    with open(tmp_path / "train.rec", "r+b") as rec:  # break record 2's magic: a full scan would now fail
        rec.seek(int((tmp_path / "train.idx").read_text().splitlines()[2].split()[1]))
        rec.write(b"\0\0\0\0")
    with pytest.raises(FacekdError, match="bad magic"):
        RecordIODataset(tmp_path / "train.rec")
    images = open_keyed_images(tmp_path / "train.rec", "recordio")
    assert images.read_bytes("rec:4") == samples[3][1]
    for key in ("rec:9", "person01/000.jpg", "rec:-1"):
        with pytest.raises(FacekdError, match=rf"train\.idx: no record for key '{key}'"):
            images.read_bytes(key)


def test_a_file_name_that_is_not_utf8_is_refused_by_name(tmp_path: Path, face_folder: Path) -> None:
    root = tmp_path / "faces"
    shutil.copytree(face_folder, root)
    identity = sorted(path.name for path in root.iterdir())[1]
    first = sorted((root / identity).iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(root / identity), b"caf\xe9.jpg"))  # Latin-1, not UTF-8
    expected = f"{root}: b'{identity}/caf\\xe9.jpg' is not a UTF-8 file or folder name; facekd keeps image keys as UTF-8"
    with pytest.raises(FacekdError, match=re.escape(expected)):
        ImageFolderDataset(root)
