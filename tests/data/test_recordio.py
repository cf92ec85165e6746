import io
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.data.recordio import (
    RecordIODataset,
    RecordIOImages,
    encode_record,
    read_idx,
    read_idx_line_by_line,
    tab_separated_offsets,
    write_recordio,
)
from pipeline.errors import CorruptImageError, FacekdError

# The format spelled out independently of the module under test.
MAGIC_LE = bytes.fromhex("0a23d7ce")  # 0xced7230a, little-endian


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def part(cflag: int, data: bytes) -> bytes:
    return MAGIC_LE + struct.pack("<I", cflag << 29 | len(data)) + data + bytes(-len(data) % 4)


def ir_header(flag: int, label: float, record_id: int) -> bytes:
    return struct.pack("<IfQQ", flag, label, record_id, 0)


def write_stream(tmp_path, records: list[bytes], idx_lines: list[str] | None = None):
    """Concatenate encoded records into train.rec; index them in order unless `idx_lines` is given."""
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    offsets, position = [], 0
    for record in records:
        offsets.append(position)
        position += len(record)
    rec_path.write_bytes(b"".join(records))
    lines = idx_lines if idx_lines is not None else [f"{i}\t{offset}" for i, offset in enumerate(offsets)]
    idx_path.write_text("".join(line + "\n" for line in lines))
    return rec_path, idx_path, offsets


RED, GREEN, BLUE = jpeg((250, 0, 0)), jpeg((0, 250, 0)), jpeg((0, 0, 250))
ID_IS_MAGIC = 0xCED7230A  # the id field at payload byte 8 then holds the magic: mxnet splits there
ID_IS_TWO_MAGICS = 0xCED7230A_CED7230A  # payload bytes 8 and 12: an empty middle part


@pytest.fixture
def hand_built(tmp_path):
    """insightface layout built with struct: header (4, 4), then three images, two of them multi-part."""
    image_1 = ir_header(0, 42.0, 1) + RED
    image_2 = ir_header(0, 7.0, ID_IS_MAGIC) + GREEN
    image_3 = ir_header(2, 0.0, ID_IS_TWO_MAGICS) + struct.pack("<2f", 42.0, 3.5) + BLUE
    records = [
        part(0, ir_header(2, 0.0, 0) + struct.pack("<2f", 4.0, 4.0)),
        part(0, image_1),
        part(1, image_2[:8]) + part(3, image_2[12:]),
        part(1, image_3[:8]) + part(2, b"") + part(3, image_3[16:]),
    ]
    return write_stream(tmp_path, records)


def test_hand_built_stream_reassembles_multi_part_records(hand_built):
    rec_path, idx_path, offsets = hand_built
    dataset = RecordIODataset(rec_path, idx_path)
    assert dataset.keys == ["rec:1", "rec:2", "rec:3"]
    assert dataset.identity_names == ["7", "42"]
    assert dataset.labels.tolist() == [1, 0, 1]
    assert dataset.identity_ids.tolist() == [7, 42]
    assert [dataset.read_bytes(i) for i in range(3)] == [RED, GREEN, BLUE]
    assert dataset.source(1) == f"{rec_path} record 2 (offset {offsets[2]})"
    sample = dataset[2]
    assert sample.key == "rec:3" and sample.label == 1
    assert sample.image.shape == (6, 8, 3) and sample.image[..., 2].mean() > 200


def test_writer_splits_records_exactly_like_the_hand_built_stream():
    image = ir_header(2, 0.0, ID_IS_TWO_MAGICS) + struct.pack("<2f", 42.0, 3.5) + BLUE
    assert encode_record(image) == part(1, image[:8]) + part(2, b"") + part(3, image[16:])
    assert encode_record(b"abcde") == part(0, b"abcde")
    assert encode_record(b"a" + MAGIC_LE + b"bcd") == part(0, b"a" + MAGIC_LE + b"bcd")  # unaligned: kept
    assert encode_record(b"abcd" + MAGIC_LE) == part(1, b"abcd") + part(3, b"")


def test_header_with_flag_zero_means_every_indexed_record_is_an_image(tmp_path):
    records = [part(0, ir_header(0, 5.0, 0) + RED), part(0, ir_header(0, 3.0, 1) + GREEN)]
    rec_path, idx_path, offsets = write_stream(
        tmp_path, records, idx_lines=[f"1\t{len(records[0])}", "0\t0"]
    )
    dataset = RecordIODataset(rec_path, idx_path)
    assert dataset.keys == ["rec:1", "rec:0"]
    assert dataset.identity_names == ["3", "5"]
    assert dataset.labels.tolist() == [0, 1]
    assert dataset.read_bytes(1) == RED


def test_writer_round_trip(tmp_path):
    samples = [(10, RED), (3, GREEN), (10, BLUE), (99, RED)]
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    assert write_recordio(rec_path, idx_path, samples) == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.idx", "train.rec"]
    dataset = RecordIODataset(rec_path)  # .idx found next to the .rec
    assert dataset.keys == ["rec:1", "rec:2", "rec:3", "rec:4"]
    assert dataset.identity_names == ["3", "10", "99"]
    assert dataset.labels.tolist() == [1, 0, 1, 2]
    assert [dataset.read_bytes(i) for i in range(4)] == [image for _, image in samples]
    # insightface's own reading of record 0: images are records 1 .. label[0] - 1
    header = rec_path.read_bytes()[8:40]
    flag, _, _, _, first_label, second_label = struct.unpack("<IfQQ2f", header)
    assert (flag, first_label, second_label) == (2, 5.0, 5.0)


def test_fingerprint_follows_record_extents(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec_path, idx_path, [(1, RED), (2, GREEN)])
    before = RecordIODataset(rec_path).fingerprint()
    assert RecordIODataset(rec_path).fingerprint() == before
    write_recordio(rec_path, idx_path, [(1, RED), (2, GREEN + b"\0\0\0\0")])
    assert RecordIODataset(rec_path).fingerprint() != before


def test_pickled_dataset_reads_in_a_fresh_copy(hand_built):
    rec_path, idx_path, _ = hand_built
    dataset = RecordIODataset(rec_path, idx_path)
    dataset.read_bytes(0)  # opens the file in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.keys == dataset.keys
    assert np.array_equal(copy.labels, dataset.labels)
    assert copy.read_bytes(2) == BLUE


def test_missing_files_are_named(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    with pytest.raises(FacekdError, match="train.rec: RecordIO data file does not exist"):
        RecordIODataset(rec_path, idx_path)
    write_recordio(rec_path, idx_path, [(1, RED)])
    idx_path.unlink()
    with pytest.raises(FacekdError, match="train.idx: RecordIO index file does not exist"):
        RecordIODataset(rec_path, idx_path)


def test_bad_magic_names_record_and_offset(tmp_path):
    records = [part(0, ir_header(0, 1.0, 0) + RED)]
    rec_path, idx_path, _ = write_stream(tmp_path, records, idx_lines=["0\t4"])
    with pytest.raises(FacekdError, match=r"train.rec record 0 \(offset 4\): bad magic 0x[0-9a-f]{8} at offset 4"):
        RecordIODataset(rec_path, idx_path)


def test_truncated_record_is_reported_when_read(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec_path, idx_path, [(1, RED), (2, GREEN)])
    rec_path.write_bytes(rec_path.read_bytes()[:-10])
    dataset = RecordIODataset(rec_path)  # the label header is still complete
    assert dataset.read_bytes(0) == RED
    with pytest.raises(FacekdError, match=r"train.rec record 2 \(offset \d+\): record is truncated"):
        dataset.read_bytes(1)


def test_idx_pointing_past_end_of_file(tmp_path):
    records = [part(0, ir_header(0, 1.0, 0) + RED)]
    rec_path, idx_path, _ = write_stream(tmp_path, records, idx_lines=["0\t0", "1\t100000"])
    with pytest.raises(FacekdError, match=r"train.idx: record 1 points to offset 100000, past the end of"):
        RecordIODataset(rec_path, idx_path)


def test_record_numbers_beyond_64_bits_are_refused_naming_the_index(tmp_path):
    records = [part(0, ir_header(0, 1.0, 0) + RED)]
    rec_path, idx_path, _ = write_stream(tmp_path, records, idx_lines=["0\t0", "1" + "0" * 19 + "\t0"])
    with pytest.raises(FacekdError, match=r"train.idx: a record index or offset does not fit in 64 bits"):
        RecordIODataset(rec_path, idx_path)


def test_keys_out_of_the_index_or_beyond_64_bits_are_refused(hand_built):
    images = RecordIOImages(*hand_built[:2])
    assert images.read_bytes("rec:3") == RecordIODataset(*hand_built[:2]).read_bytes(2)
    for key in ("rec:9", "rec:" + "9" * 30, "3"):
        with pytest.raises(FacekdError, match=f"no record for key '{key}'"):
            images.read_bytes(key)


def test_malformed_idx_line_is_named(tmp_path):
    records = [part(0, ir_header(0, 1.0, 0) + RED)]
    rec_path, idx_path, _ = write_stream(tmp_path, records, idx_lines=["0\t0", "1\tabc"])
    with pytest.raises(FacekdError, match=r"train.idx line 2: expected .*got '1\\tabc'"):
        RecordIODataset(rec_path, idx_path)


def test_vectorised_idx_parse_agrees_with_the_line_by_line_parser(tmp_path):
    """Random MXNet-style indexes (blank lines, CRLF, leading zeros, with or without a final newline) parse alike."""
    rng = np.random.default_rng(0)
    idx_path = tmp_path / "train.idx"
    for trial in range(8):
        count = int(rng.integers(1, 3000))
        records = rng.permutation(10 * count)[:count]
        offsets = rng.integers(0, 10**17, count)  # 18 digits at most with the leading zero below
        lines = [f"{record}\t{offset}" for record, offset in zip(records, offsets)]
        lines[0] = f"000{records[0]}\t0{offsets[0]}"
        for position in rng.integers(0, count, 20):
            lines.insert(int(position), "")
        newline = "\r\n" if trial % 2 else "\n"
        data = newline.join(lines).encode() + (newline.encode() if trial % 4 < 2 else b"")
        fast = tab_separated_offsets(data)
        assert fast is not None
        assert list(fast.items()) == list(read_idx_line_by_line(idx_path, data).items())
        assert list(fast.items()) == [(int(record), int(offset)) for record, offset in zip(records, offsets)]
    assert tab_separated_offsets(b"") == tab_separated_offsets(b"\n\n") == {}


@pytest.mark.parametrize("data", [
    b"0  0\n1 5\n", b" 0\t0\n", b"\t0\t0\n", b"0\t\t0\n", b"0\t0\t\n", b"\t\n0\t0\n",
    b"0\t0\r1\t5\n", b"0\t0\x0c\n", b"0\t0\n1\t" + b"9" * 19 + b"\n",
])
def test_other_spellings_the_line_by_line_parser_accepts_still_parse(tmp_path, data):
    idx_path = tmp_path / "train.idx"
    idx_path.write_bytes(data)
    assert tab_separated_offsets(data) is None
    assert read_idx(idx_path) == read_idx_line_by_line(idx_path, data)
    assert read_idx(idx_path)[0] == 0


@pytest.mark.parametrize("data, message", [
    (b"0\t0\n\n1\t5\t6\n", r"train.idx line 3: expected .*got '1\\t5\\t6'"),
    (b"0\t0\r\n1\r\n", r"train.idx line 2: expected .*got '1'"),
    (b"0\t0\n-1\t5\n", r"train.idx line 2: expected .*got '-1\\t5'"),
    (b"0\t0\n\n0\t5", r"train.idx line 3: record 0 is listed twice"),
])
def test_bad_idx_lines_are_named_by_line(tmp_path, data, message):
    idx_path = tmp_path / "train.idx"
    idx_path.write_bytes(data)
    with pytest.raises(FacekdError, match=message):
        read_idx(idx_path)


def test_header_listing_unindexed_records(tmp_path):
    header = part(0, ir_header(2, 0.0, 0) + struct.pack("<2f", 3.0, 3.0))
    image = part(0, ir_header(0, 1.0, 1) + RED)
    rec_path, idx_path, _ = write_stream(tmp_path, [header, image])
    with pytest.raises(FacekdError, match=r"header label\[0\] = 3.0 should end the image records: an integer in 2..2"):
        RecordIODataset(rec_path, idx_path)
    rec_path, idx_path, _ = write_stream(
        tmp_path, [header, image, image], idx_lines=["0\t0", f"1\t{len(header)}", f"5\t{len(header)}"]
    )
    with pytest.raises(FacekdError, match="images are records 1..2, but record 2 is not in the index"):
        RecordIODataset(rec_path, idx_path)


def test_non_integer_identity_label(tmp_path):
    records = [part(0, ir_header(0, 1.5, 0) + RED)]
    rec_path, idx_path, _ = write_stream(tmp_path, records)
    with pytest.raises(FacekdError, match=r"record 0 \(offset 0\): identity label 1.5 is not a non-negative integer"):
        RecordIODataset(rec_path, idx_path)


def test_corrupt_jpeg_names_the_record(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec_path, idx_path, [(1, RED), (2, b"this is not a jpeg")])
    dataset = RecordIODataset(rec_path)
    assert dataset.load(0).shape == (6, 8, 3)
    with pytest.raises(CorruptImageError, match=r"train.rec record 2 \(offset \d+\): cannot decode image") as error:
        dataset.load(1)
    assert "not a known image format; 18 bytes starting b'this is '" in str(error.value)
    assert "BytesIO" not in str(error.value)


def test_writer_rejects_labels_float32_cannot_hold(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    with pytest.raises(FacekdError, match="sample 1: label -1 is outside"):
        write_recordio(rec_path, idx_path, [(1, RED), (-1, GREEN)])
    assert list(tmp_path.iterdir()) == []


def test_open_dataset_finds_an_insightface_folder_and_embed_reads_it(tmp_path, tiny_teacher):
    """A faces_emore-style folder (train.rec + train.idx) goes through stage one like an image folder."""
    from pipeline.data.open import open_dataset
    from tests.stage_one.stores import embed_here
    from pipeline.stage_one.store import EmbeddingStore

    rng = np.random.default_rng(0)
    samples = []
    for label in (3, 3, 7, 7, 9):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        samples.append((label, buffer.getvalue()))
    folder = tmp_path / "faces_emore"
    folder.mkdir()
    write_recordio(folder / "train.rec", folder / "train.idx", samples)
    dataset = open_dataset(folder)
    assert isinstance(dataset, RecordIODataset) and dataset.labels.tolist() == [0, 0, 1, 1, 2]
    assert isinstance(open_dataset(folder / "train.rec"), RecordIODataset)
    embed_here(dataset, str(tiny_teacher), tmp_path / "s.h5")
    with EmbeddingStore(tmp_path / "s.h5") as store:
        assert store.provenance["dataset_kind"] == "recordio" and store.keys == dataset.keys


def test_open_dataset_matches_the_rec_suffix_in_any_case(tmp_path):
    from pipeline.data.open import open_dataset

    write_recordio(tmp_path / "FACES.REC", tmp_path / "FACES.IDX", [(1, RED), (2, GREEN)])
    dataset = open_dataset(tmp_path / "FACES.REC")
    assert isinstance(dataset, RecordIODataset) and dataset.idx_path.name == "FACES.IDX"
    assert dataset.labels.tolist() == [0, 1] and dataset.load(1).shape == (6, 8, 3)


def test_a_file_size_limit_leaves_neither_file_and_names_them(tmp_path):
    """Under `ulimit -f` the .rec cannot be finished: one error line, and no .rec/.idx pair that looks complete."""
    script = (
        "import resource, sys\n"
        "from pipeline.data.recordio import write_recordio\n"
        "from pipeline.errors import FacekdError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    write_recordio({str(tmp_path / 'train.rec')!r}, {str(tmp_path / 'train.idx')!r},\n"
        "                   [(1, bytes(1000))] * 10)\n"
        "except FacekdError as error:\n"
        "    sys.exit(str(error))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "train.rec and train.idx: cannot write (File too large); train.rec and train.idx were left as they were" in result.stderr
    assert list(tmp_path.iterdir()) == []
