"""Writing the synthetic splits: JPEG image folders `<split>/<identity>/<NNNN>.jpg`, one worker process per core.

Pillow encodes the rendered pixels; the same seed and parameters give byte-identical files
whatever the worker count.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.config import MAX_IDENTITIES_PER_SPLIT, MIN_SIZE
from pipeline.data.synth.render import render_face
from pipeline.data.synth.traits import sample_traits, sample_variation
from pipeline.errors import FacekdError
from pipeline.files import write_bytes_atomically

# Each split starts at its own identity index, so one split's size never changes another's people.
SPLIT_FIRST_IDENTITY = {"teacher": 0, "student": 1_000_000, "heldout": 2_000_000}
JPEG_QUALITY = 95


def identity_name(identity: int) -> str:
    """Folder name of person `identity`; zero-padded so that sorted names follow identity order."""
    return f"id{identity:07d}"


def image_name(image: int) -> str:
    return f"{image:04d}.jpg"


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG at quality 95 without chroma subsampling, which would smear eyes and lips at 64 px."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


@dataclass(frozen=True)
class _IdentityJob:
    out_dir: Path
    identity: int
    images_per_identity: int
    size: int
    seed: int


def _write_identity(job: _IdentityJob) -> int:
    """Render and write every image of one person; runs in a worker process."""
    traits = sample_traits(job.seed, job.identity)
    folder = job.out_dir / identity_name(job.identity)
    folder.mkdir(exist_ok=True)
    for image in range(job.images_per_identity):
        pixels = render_face(traits, sample_variation(job.seed, job.identity, image), job.size)
        # a crash leaves at most a `.partial` file, never a truncated image under the final name
        write_bytes_atomically(folder / image_name(image), encode_jpeg(pixels))
    return job.images_per_identity


def _run(jobs: list[_IdentityJob], workers: int) -> Iterator[int]:
    if workers == 1:
        yield from map(_write_identity, jobs)
        return
    # spawn: workers import this module afresh instead of inheriting a forked copy of the parent's
    # threads and state; the same on every OS
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_write_identity, jobs)


def _check_folder(out_dir: Path, identities: Sequence[int], images_per_identity: int) -> None:
    """Refuse a folder holding files this split would not write: a reader would mix them in."""
    expected_images = {image_name(image) for image in range(images_per_identity)}
    expected_files = expected_images | {name + ".partial" for name in expected_images}
    expected_folders = {identity_name(identity) for identity in identities}
    for entry in sorted(out_dir.iterdir()):
        unexpected = [] if entry.name in expected_folders and entry.is_dir() else [entry]
        if not unexpected:
            unexpected = sorted(path for path in entry.iterdir() if path.name not in expected_files)
        if unexpected:
            raise FacekdError(
                f"{unexpected[0]}: not part of the requested split ({len(identities)} identities x "
                f"{images_per_identity} images); remove it or write to an empty folder"
            )


def _check_arguments(identities: Sequence[int], images_per_identity: int, size: int, seed: int, workers: int) -> None:
    for name, value, lowest in (("images_per_identity", images_per_identity, 1), ("size", size, MIN_SIZE),
                                ("seed", seed, 0), ("workers", workers, 1)):
        if not isinstance(value, int) or value < lowest:
            raise FacekdError(f"synthetic data: {name} is {value!r}; expected an int >= {lowest}")
    if len(identities) == 0 or min(identities) < 0 or len(set(identities)) != len(identities):
        raise FacekdError("synthetic data: identity indices must be a non-empty list of distinct non-negative ints")


def generate_split(out_dir: str | os.PathLike[str], identity_ids: Sequence[int], images_per_identity: int, size: int,
                   seed: int, workers: int = 1, progress: bool = True) -> int:
    """Write `out_dir/<identity>/<NNNN>.jpg` for the given identity indices; returns the image count.

    The output depends only on the arguments other than `workers` and `progress`; a rerun
    rewrites the same bytes, which also completes a run that was interrupted. Workers are
    spawned, so a script that calls this with `workers` > 1 needs `if __name__ == "__main__":`.
    """
    _check_arguments(identity_ids, images_per_identity, size, seed, workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_folder(out_dir, identity_ids, images_per_identity)
    jobs = [_IdentityJob(out_dir, identity, images_per_identity, size, seed) for identity in identity_ids]
    written = 0
    with tqdm(total=len(jobs) * images_per_identity, desc=out_dir.name, unit="img", disable=not progress) as bar:
        for count in _run(jobs, workers):
            written += count
            bar.update(count)
    return written


def generate(out_root: str | os.PathLike[str], teacher_identities: int, teacher_images: int,
             student_identities: int, student_images: int, heldout_identities: int, heldout_images: int,
             size: int, seed: int, workers: int = 1, progress: bool = True) -> dict[str, int]:
    """Write the teacher, student and held-out splits under `out_root`; returns images per split.

    Splits hold disjoint people: each split's identity indices start at its own offset
    (`SPLIT_FIRST_IDENTITY`), so changing one split's size leaves the others' images unchanged.
    """
    splits = {
        "teacher": (teacher_identities, teacher_images),
        "student": (student_identities, student_images),
        "heldout": (heldout_identities, heldout_images),
    }
    for name, (count, _) in splits.items():
        if not isinstance(count, int) or not 1 <= count <= MAX_IDENTITIES_PER_SPLIT:
            raise FacekdError(f"synthetic data: {name}_identities is {count!r}; expected 1..{MAX_IDENTITIES_PER_SPLIT}")
    written = {}
    for name, (count, images) in splits.items():
        first = SPLIT_FIRST_IDENTITY[name]
        written[name] = generate_split(Path(out_root) / name, range(first, first + count), images, size, seed,
                                       workers, progress)
    return written
