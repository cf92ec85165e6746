"""Open a dataset by path: an image folder, or an insightface RecordIO folder/file."""
from __future__ import annotations

from pathlib import Path

from pipeline.data.dataset import FaceDataset, KeyedImages
from pipeline.data.image_folder import ImageFolderDataset, ImageFolderImages
from pipeline.errors import FacekdError

DATASET_FORMATS = ("auto", "image_folder", "recordio")


def open_dataset(path: str | Path, dataset_format: str = "auto") -> FaceDataset:
    """`auto` picks RecordIO when `path` is a .rec file (any case) or a folder holding train.rec."""
    rec_path = recordio_path(path, dataset_format)
    if rec_path is not None:
        from pipeline.data.recordio import RecordIODataset

        return RecordIODataset(rec_path)
    return ImageFolderDataset(path)


def open_keyed_images(path: str | Path, dataset_format: str = "auto") -> KeyedImages:
    """The images of the dataset at `path` by key, without listing it (formats as `open_dataset`)."""
    rec_path = recordio_path(path, dataset_format)
    if rec_path is not None:
        from pipeline.data.recordio import RecordIOImages

        return RecordIOImages(rec_path)
    return ImageFolderImages(path)


def recordio_path(path: str | Path, dataset_format: str) -> Path | None:
    """The .rec file of a RecordIO dataset at `path`; None for an image folder."""
    path = Path(path)
    if dataset_format not in DATASET_FORMATS:
        raise FacekdError(f"dataset format is {dataset_format!r}; expected one of {', '.join(DATASET_FORMATS)}")
    if not path.exists():
        raise FacekdError(f"{path}: dataset not found")
    rec_path = path if path.suffix.lower() == ".rec" else path / "train.rec"
    if dataset_format == "recordio" or (dataset_format == "auto" and rec_path.is_file()):
        return rec_path
    if path.is_file():
        raise FacekdError(
            f"{path}: is a file; expected a dataset folder (one sub-folder of images per identity, "
            "or train.rec + train.idx) or a .rec file"
        )
    return None
