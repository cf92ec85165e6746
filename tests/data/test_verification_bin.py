import io
import itertools
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.image_folder import ImageFolderDataset
from pipeline.data.verification_bin import (
    load_bin,
    load_pair_list,
    make_bin_from_dataset,
    make_pairs,
    write_bin,
)
from pipeline.errors import FacekdError


def encoded_image(color: tuple[int, int, int], image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=image_format)
    return buffer.getvalue()


COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def image_folder(root: Path, images_per_identity: dict[str, int]) -> ImageFolderDataset:
    for identity, count in images_per_identity.items():
        (root / identity).mkdir(parents=True)
        for index in range(count):
            (root / identity / f"{index}.png").write_bytes(encoded_image((index * 20, 0, 0), "PNG"))
    return ImageFolderDataset(root)


def test_write_bin_then_load_bin_round_trips_jpeg_pairs(tmp_path):
    images = [encoded_image(color) for color in COLORS]
    path = tmp_path / "lfw.bin"
    write_bin(path, images, [True, False])

    with open(path, "rb") as file:  # insightface's layout: a protocol-4 pickle of (list of bytes, list of bools)
        assert file.read(2) == b"\x80\x04"
        file.seek(0)
        assert pickle.load(file) == (images, [True, False])
    pairs = load_bin(path)
    assert pairs.images == images
    assert pairs.issame.dtype == bool and pairs.issame.tolist() == [True, False]
    assert pairs.name == "lfw" and len(pairs) == 2
    pixel = pairs.decode(2)[4, 4]
    assert pairs.decode(2).shape == (8, 8, 3) and pixel[2] > 200 and pixel[0] < 50
    assert [entry.name for entry in tmp_path.iterdir()] == ["lfw.bin"]  # no temporary file left


def test_load_bin_reads_the_python2_insightface_layout(tmp_path):
    # What Python 2's cPickle.dump((bins, issame_list), f, protocol=2) writes: images as `str`
    # (BINSTRING), flags as NEWTRUE/NEWFALSE, each container memoised.
    images = [encoded_image(color) for color in COLORS]
    data = b"\x80\x02" + b"]q\x00("
    for image in images:
        data += b"T" + struct.pack("<i", len(image)) + image
    data += b"e]q\x01(\x88\x89e\x86q\x02."
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(data)

    pairs = load_bin(path)
    assert pairs.images == images
    assert pairs.issame.tolist() == [True, False]
    assert pairs.name == "agedb_30"


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_bin_admits_numpy_bool_flags(tmp_path, protocol):
    # Protocol 2 from Python 3 also spells bytes as _codecs.encode(text, "latin1").
    images = [encoded_image(color) for color in COLORS]
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps((images, [np.True_, np.False_]), protocol=protocol))

    pairs = load_bin(path)
    assert pairs.images == images
    assert pairs.issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_bin_admits_a_numpy_bool_array_of_flags(tmp_path, protocol):
    # insightface's scripts pickle (bins, issame_list) with issame_list often a numpy bool array;
    # protocols 2-4 spell it numpy._core.multiarray._reconstruct + numpy.ndarray, protocol 5 _frombuffer.
    images = [encoded_image(color) for color in COLORS]
    path = tmp_path / "calfw.bin"
    path.write_bytes(pickle.dumps((images, np.array([True, False])), protocol=protocol))

    pairs = load_bin(path)
    assert pairs.images == images
    assert pairs.issame.dtype == bool and pairs.issame.tolist() == [True, False]


def test_load_bin_admits_a_numpy_bool_array_pickled_by_numpy_1(tmp_path):
    # numpy 1.x wrote the same opcodes, naming numpy.core instead of numpy._core.
    images = [encoded_image(color) for color in COLORS]
    numpy_2 = pickle.dumps((images, np.array([False, True])), protocol=2)
    assert numpy_2.count(b"numpy._core.multiarray\n_reconstruct") == 1  # protocol 2: text GLOBAL opcodes
    path = tmp_path / "cplfw.bin"
    path.write_bytes(numpy_2.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))

    assert load_bin(path).issame.tolist() == [False, True]


class RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_load_bin_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(([b"a", b"b"], [RunsShellCommand(f"touch {shlex.quote(str(marker))}")]))
    pickle.loads(payload)  # the payload is real: an ordinary unpickler runs it
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)

    with pytest.raises(FacekdError) as error:
        load_bin(path)
    assert str(path) in str(error.value)
    assert f"refused to load global {os.system.__module__}.system" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, refused",
    [
        (([b"a", b"b"], np.array([True, "x"], dtype=object)), "numpy dtype 'O8'"),  # could hold any object
        (([b"a", b"b"], np.array([1])), "numpy dtype 'i8'"),
        (([b"a", b"b"], np.ma.masked_array([True])), "global numpy.ma.core._mareconstruct"),
        (([b"a", b"b"], [np.float64(1.0)]), "'f8'"),
        (([b"a", b"b"], [eval]), "builtins.eval"),
    ],
)
def test_load_bin_refuses_other_globals(tmp_path, content, refused):
    path = tmp_path / "other.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(FacekdError, match=refused) as error:
        load_bin(path)
    assert str(path) in str(error.value) and "refused to load" in str(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (np.array([[True]]), r"shape \(1, 1\) \(only 1-D bool arrays"),
        (np.array([2], dtype=np.uint8).view(bool), "bytes other than 0 and 1"),
    ],
)
def test_load_bin_refuses_numpy_bool_arrays_that_are_not_flags(tmp_path, flags, message):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], flags), protocol=4))
    with pytest.raises(FacekdError, match=message):
        load_bin(path)


def test_load_bin_refuses_codecs_encode_other_than_latin1(tmp_path):
    class Rot13:
        def __reduce__(self):
            return __import__("codecs").encode, ("abc", "rot13")

    path = tmp_path / "rot13.bin"
    path.write_bytes(pickle.dumps(([Rot13(), b"b"], [True]), protocol=4))
    with pytest.raises(FacekdError, match="rot13"):
        load_bin(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ([b"a", b"b"], "expected a pickled pair"),
        (([b"a", b"b"], [True], [True]), "expected a pickled pair"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 same/not-same flags"),
        (([b"a", "b"], [True]), "image 1 is a str"),
        (([b"a", b"b"], [2]), "flag 0 is 2"),
        (([b"a", b"b"], [1.0]), "flag 0 is 1.0"),
        (([], []), "holds no pairs"),
    ],
)
def test_load_bin_reports_structural_errors(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(FacekdError, match=message) as error:
        load_bin(path)
    assert str(path) in str(error.value)


def test_load_bin_reports_truncated_and_missing_files(tmp_path):
    path = tmp_path / "truncated.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-5])
    with pytest.raises(FacekdError, match=f"{path}: not a readable"):
        load_bin(path)
    with pytest.raises(FacekdError, match="missing.bin: cannot read"):
        load_bin(tmp_path / "missing.bin")


def test_write_bin_refuses_mismatched_counts(tmp_path):
    with pytest.raises(FacekdError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True])
    assert not any(tmp_path.iterdir())


@pytest.fixture
def four_identities(tmp_path):
    return image_folder(tmp_path / "faces", {"a": 3, "b": 2, "c": 1, "d": 4})


def test_make_pairs_is_balanced_distinct_and_labelled_right(four_identities):
    labels = four_identities.labels
    pairs, issame = make_pairs(four_identities, 20, seed=0)  # all 10 possible same pairs

    assert len(pairs) == 20 and issame.tolist() == [True, False] * 10
    assert all(first != second for first, second in pairs)
    assert [labels[first] == labels[second] for first, second in pairs] == issame.tolist()
    unordered = {tuple(sorted(pair)) for pair in pairs}
    assert len(unordered) == 20
    all_same_pairs = {
        pair for pair in itertools.combinations(range(len(labels)), 2) if labels[pair[0]] == labels[pair[1]]
    }
    assert {tuple(sorted(pair)) for pair, same in zip(pairs, issame) if same} == all_same_pairs


def test_make_pairs_is_seeded(four_identities):
    pairs, issame = make_pairs(four_identities, 8, seed=3)
    assert make_pairs(four_identities, 8, seed=3)[0] == pairs
    assert make_pairs(four_identities, 8, seed=4)[0] != pairs


def test_make_pairs_draws_uniformly_over_possible_pairs(tmp_path):
    # Identities of 1, 1 and 6 images: {x, y}, the pair of the two singletons, is one of 13 different
    # pairs. Drawing identities uniformly would give it 1/3 of the draws, drawing first images uniformly 1/28.
    dataset = image_folder(tmp_path / "different", {"x": 1, "y": 1, "z": 6})
    draws = 1000
    singletons = sum(set(make_pairs(dataset, 2, seed)[0][1]) == {0, 1} for seed in range(draws))
    assert abs(singletons / draws - 1 / 13) < 0.03
    # Identities of 2 and 6 images: 1 + 15 same pairs; drawing identities uniformly would give 1/2.
    dataset = image_folder(tmp_path / "same", {"p": 2, "q": 6})
    small_identity = sum(set(make_pairs(dataset, 2, seed)[0][0]) == {0, 1} for seed in range(draws))
    assert abs(small_identity / draws - 1 / 16) < 0.03


def test_make_pairs_refuses_impossible_requests(four_identities, tmp_path):
    with pytest.raises(FacekdError, match="needs 11 same-identity pairs, but the dataset allows only 10"):
        make_pairs(four_identities, 22, seed=0)
    with pytest.raises(FacekdError, match="num_pairs: 7"):
        make_pairs(four_identities, 7, seed=0)
    one_identity = image_folder(tmp_path / "one", {"solo": 3})
    with pytest.raises(FacekdError, match="different-identity pairs, but the dataset allows only 0"):
        make_pairs(one_identity, 2, seed=0)


def test_make_bin_from_dataset_stores_the_original_bytes(four_identities, tmp_path):
    path = tmp_path / "made.bin"
    make_bin_from_dataset(four_identities, path, 6, seed=1)

    pairs = load_bin(path)
    expected_pairs, expected_issame = make_pairs(four_identities, 6, seed=1)
    assert pairs.images == [four_identities.read_bytes(index) for pair in expected_pairs for index in pair]
    assert pairs.issame.tolist() == expected_issame.tolist()
    assert pairs.decode(0).shape == (8, 8, 3)


def test_load_pair_list_reads_images_relative_to_root(four_identities, tmp_path):
    list_path = tmp_path / "pairs.txt"
    list_path.write_text("a/0.png a/1.png 1\n\nb/0.png d/3.png 0\n")

    pairs = load_pair_list(list_path, four_identities.root)
    root = four_identities.root
    expected = [root / "a/0.png", root / "a/1.png", root / "b/0.png", root / "d/3.png"]
    assert pairs.images == [path.read_bytes() for path in expected]
    assert pairs.issame.tolist() == [True, False]
    assert pairs.name == "pairs"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a/0.png a/1.png 1\na/0.png 1\n", "line 2: 'a/0.png 1'"),
        ("a/0.png a/1.png yes\n", "line 1: .* \\(expected 'path1 path2 0\\|1'\\)"),
        ("a/0.png a/1.png 1\n\na/0.png a/9.png 0\n", "line 3: cannot read .*a/9.png"),
        ("\n\n", "no pairs"),
    ],
)
def test_load_pair_list_names_the_bad_line(four_identities, tmp_path, text, message):
    list_path = tmp_path / "pairs.txt"
    list_path.write_text(text)
    with pytest.raises(FacekdError, match=message) as error:
        load_pair_list(list_path, four_identities.root)
    assert str(list_path) in str(error.value)
