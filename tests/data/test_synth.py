from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.synth import generate, generate_split
from pipeline.data.synth.render import render_image
from pipeline.data.synth.traits import sample_traits
from pipeline.data.synth.write import SPLIT_FIRST_IDENTITY, identity_name
from pipeline.errors import FacekdError
from stages.cli import cli

SIZE = 32
TINY_SPLITS = dict(teacher_identities=3, teacher_images=2, student_identities=2, student_images=2,
                   heldout_identities=2, heldout_images=3)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, size=SIZE, seed=7, progress=False, **TINY_SPLITS)
    return root


def test_same_seed_gives_byte_identical_files(tiny_synth, tmp_path):
    generate(tmp_path / "again", size=SIZE, seed=7, progress=False, **TINY_SPLITS)
    generate(tmp_path / "other_seed", size=SIZE, seed=8, progress=False, **TINY_SPLITS)
    reference = folder_bytes(tiny_synth)
    assert len(reference) == 3 * 2 + 2 * 2 + 2 * 3
    assert folder_bytes(tmp_path / "again") == reference
    other = folder_bytes(tmp_path / "other_seed")
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_worker_count_does_not_change_the_files(tmp_path):
    identities = range(5, 9)
    generate_split(tmp_path / "one", identities, 2, SIZE, seed=3, workers=1, progress=False)
    generate_split(tmp_path / "two", identities, 2, SIZE, seed=3, workers=2, progress=False)
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")


def test_a_person_does_not_depend_on_how_many_are_generated(tmp_path):
    generate_split(tmp_path / "few", range(2), 2, SIZE, seed=1, progress=False)
    generate_split(tmp_path / "many", range(4), 2, SIZE, seed=1, progress=False)
    few, many = folder_bytes(tmp_path / "few"), folder_bytes(tmp_path / "many")
    assert len(many) == 8
    assert few == {name: many[name] for name in few}
    assert sample_traits(1, 3) == sample_traits(1, 3) != sample_traits(1, 2)


def test_splits_hold_disjoint_identities_with_the_requested_counts(tiny_synth):
    splits = {name: ImageFolderDataset(tiny_synth / name) for name in ("teacher", "student", "heldout")}
    names = {split: set(dataset.identity_names) for split, dataset in splits.items()}
    assert names["teacher"].isdisjoint(names["student"])
    assert names["teacher"].isdisjoint(names["heldout"])
    assert names["student"].isdisjoint(names["heldout"])
    first_student = SPLIT_FIRST_IDENTITY["student"]
    assert sorted(names["student"]) == [identity_name(first_student), identity_name(first_student + 1)]
    assert [len(splits[name]) for name in splits] == [6, 4, 6]


def test_image_folder_dataset_reads_images_and_labels(tiny_synth):
    dataset = ImageFolderDataset(tiny_synth / "heldout")
    assert dataset.num_identities == 2
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.key.split("/")[0] == dataset.identity_names[sample.label]
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert dataset.keys[:3] == [f"{dataset.identity_names[0]}/{index:04d}.jpg" for index in range(3)]
    # decoded JPEG stays close to the rendered pixels
    first = SPLIT_FIRST_IDENTITY["heldout"]
    rendered = render_image(7, first, 0, SIZE).astype(float)
    assert np.abs(dataset.load(0).astype(float) - rendered).mean() < 4


@pytest.mark.parametrize("size", [64, 112])
def test_renders_rgb_images_of_any_size(size):
    image = render_image(0, 0, 0, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert image.std() > 10  # a picture, not a flat fill


def test_images_of_one_person_are_more_alike_than_images_of_different_people():
    """Correlation of 8 x 8 colour thumbnails, averaged over many pairs; 0 apart if traits did nothing."""
    identities, images = 10, 6
    thumbnails = np.array([
        render_image(0, identity, image, SIZE).reshape(8, SIZE // 8, 8, SIZE // 8, 3).mean(axis=(1, 3)).ravel()
        for identity in range(identities) for image in range(images)
    ])
    thumbnails -= thumbnails.mean(axis=1, keepdims=True)
    thumbnails /= np.linalg.norm(thumbnails, axis=1, keepdims=True)
    similarity = thumbnails @ thumbnails.T
    person = np.repeat(np.arange(identities), images)
    same = person[:, None] == person[None, :]
    off_diagonal = ~np.eye(len(person), dtype=bool)
    within, between = similarity[same & off_diagonal], similarity[~same]
    assert within.mean() > between.mean() + 0.08
    assert within.max() < 0.99  # images of one person still vary


def test_rerun_completes_an_interrupted_run(tmp_path):
    generate_split(tmp_path / "clean", range(2), 3, SIZE, seed=5, progress=False)
    interrupted = tmp_path / "interrupted"
    generate_split(interrupted, range(2), 3, SIZE, seed=5, progress=False)
    folder = interrupted / identity_name(1)
    (folder / "0002.jpg").unlink()
    (folder / "0002.jpg.partial").write_bytes(b"half an image")
    generate_split(interrupted, range(2), 3, SIZE, seed=5, progress=False)
    assert folder_bytes(interrupted) == folder_bytes(tmp_path / "clean")


def test_refuses_a_folder_holding_files_of_another_run(tmp_path):
    generate_split(tmp_path, range(2), 3, SIZE, seed=5, progress=False)
    with pytest.raises(FacekdError, match="0002.jpg"):
        generate_split(tmp_path, range(2), 2, SIZE, seed=5, progress=False)
    with pytest.raises(FacekdError, match=identity_name(1)):
        generate_split(tmp_path, range(1), 3, SIZE, seed=5, progress=False)


@pytest.mark.parametrize("bad", [dict(size=8), dict(seed=-1), dict(workers=0), dict(images_per_identity=0)])
def test_rejects_bad_arguments(tmp_path, bad):
    arguments = dict(identity_ids=range(2), images_per_identity=2, size=SIZE, seed=0, workers=1) | bad
    with pytest.raises(FacekdError, match=next(iter(bad))):
        generate_split(tmp_path, progress=False, **arguments)


def write_params(path: Path, **overrides) -> Path:
    section = dict(seed=2, size=SIZE, workers=1, **TINY_SPLITS) | overrides
    path.write_text(yaml.safe_dump({"synth": section}))
    return path


def test_command_writes_the_splits_and_a_summary(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "data"
    result = CliRunner().invoke(cli, ["synth", "--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("synth: wrote teacher 3 identities / 6 images")
    assert len(ImageFolderDataset(out / "student")) == 4


def test_command_names_the_bad_parameter(tmp_path):
    params = write_params(tmp_path / "params.yaml", seed=-3)
    result = CliRunner().invoke(cli, ["synth", "--params", str(params), "--out", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert f"{params}: synth.seed: -3 — expected greater than or equal to 0" in result.output
