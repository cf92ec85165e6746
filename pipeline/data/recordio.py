"""insightface training sets in MXNet RecordIO (`train.rec` + `train.idx`), read without mxnet.

A `.rec` file is a sequence of records: uint32 magic, uint32 `lrecord` (upper 3 bits the
continuation flag, lower 29 the length), payload, zero padding to 4 bytes. MXNet splits a
payload wherever the magic appears at a 4-aligned position (flags 1 = first, 2 = middle,
3 = last part) and the reader joins the parts with the magic between them. A payload is an
`IRHeader` (flag, label, id, id2); when flag > 0 the label is instead `flag` float32 values
after the header; the encoded image follows.

insightface's layout: record 0 is a header whose label is (first identity record, end), so
the images are records 1 .. label[0] - 1 and each image's identity is its first label value.
The `.idx` file maps record index to byte offset, one "index<TAB>offset" line per record.
"""
from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.data.dataset import FaceDataset, KeyedImages
from pipeline.data.packed_strings import PackedStrings
from pipeline.errors import FacekdError
from pipeline.files import written_together

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
PART_HEADER = struct.Struct("<II")  # magic, lrecord
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
LENGTH_MASK = (1 << 29) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3
LARGEST_EXACT_LABEL = 1 << 24  # float32 holds every integer up to here
RECORD_KEY_PREFIX = "rec:"
LARGEST_INT64_DIGITS = 18  # every integer of up to 18 decimal digits fits in int64


class RecordIOFile:
    """A `.rec` file read record by record through its `.idx` offsets: nothing else of the file is read.

    The `.rec` file is opened lazily in each process, so the object pickles to dask workers.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self._file = None
        self._file_pid = None
        self.rec_path = Path(rec_path).resolve()  # absolute: dask workers may run elsewhere
        self.idx_path = Path(idx_path).resolve() if idx_path is not None else default_idx_path(self.rec_path)
        for path, what in ((self.rec_path, "RecordIO data file"), (self.idx_path, "RecordIO index file")):
            if not path.is_file():
                raise FacekdError(f"{path}: {what} does not exist (expected an insightface train.rec + train.idx pair)")
        self._offsets = RecordOffsets(read_idx(self.idx_path), self.idx_path)
        rec_size = self.rec_path.stat().st_size
        past_end = np.flatnonzero(self._offsets.offsets + PART_HEADER.size > rec_size)
        if past_end.size:
            record, offset = int(self._offsets.records[past_end[0]]), int(self._offsets.offsets[past_end[0]])
            raise FacekdError(
                f"{self.idx_path}: record {record} points to offset {offset}, past the end of "
                f"{self.rec_path} ({rec_size} bytes); expected the index written with this .rec file"
            )
        self._rec_size = rec_size

    def image_bytes(self, record: int) -> bytes:
        """The encoded image of an image record (its payload after the label header)."""
        _, _, image = self._unpack_header(record, self._read_payload(record))
        return image

    def _unpack_header(self, record: int, payload: bytes) -> tuple[int, tuple[float, ...], bytes]:
        """(flag, label values, image bytes) of a record payload."""
        if len(payload) < IR_HEADER.size:
            raise FacekdError(
                f"{self._record_source(record)}: payload of {len(payload)} bytes is shorter than the "
                f"{IR_HEADER.size}-byte image record header"
            )
        flag, label, _, _ = IR_HEADER.unpack_from(payload)
        if flag == 0:
            return flag, (label,), payload[IR_HEADER.size:]
        label_end = IR_HEADER.size + 4 * flag
        if len(payload) < label_end:
            raise FacekdError(
                f"{self._record_source(record)}: header flag {flag} announces {flag} float32 labels "
                f"but the payload ends after {len(payload)} bytes"
            )
        return flag, struct.unpack_from(f"<{flag}f", payload, IR_HEADER.size), payload[label_end:]

    def _read_payload(self, record: int, limit: int | None = None) -> bytes:
        """Reassemble `record` from its parts; with `limit`, stop once that many bytes are read."""
        offset = self._offsets[record]
        allowed_flags = (WHOLE, FIRST)
        parts = []
        size = 0
        while True:
            header = self._pread(PART_HEADER.size, offset, record)
            magic, lrecord = PART_HEADER.unpack(header)
            if magic != MAGIC:
                raise FacekdError(
                    f"{self._record_source(record)}: bad magic 0x{magic:08x} at offset {offset}, expected "
                    f"0x{MAGIC:08x} (is {self.idx_path} the index of this .rec file?)"
                )
            cflag, length = lrecord >> 29, lrecord & LENGTH_MASK
            if cflag not in allowed_flags:
                raise FacekdError(
                    f"{self._record_source(record)}: part at offset {offset} has continuation flag {cflag}, "
                    f"expected one of {allowed_flags}"
                )
            wanted = length if limit is None else min(length, limit - size)
            parts.append(self._pread(wanted, offset + PART_HEADER.size, record))
            size += wanted
            if cflag in (WHOLE, LAST) or (limit is not None and size >= limit):
                return b"".join(parts)
            parts.append(MAGIC_BYTES)
            size += len(MAGIC_BYTES)
            offset += PART_HEADER.size + padded(length)
            allowed_flags = (MIDDLE, LAST)

    def _pread(self, size: int, offset: int, record: int) -> bytes:
        data = os.pread(self._fileno(), size, offset)
        if len(data) != size:
            raise FacekdError(
                f"{self._record_source(record)}: record is truncated: needs {size} bytes at offset {offset} "
                f"but the file ends at {offset + len(data)}"
            )
        return data

    def _fileno(self) -> int:
        """The open `.rec` file of this process; a forked or unpickled copy opens its own."""
        if self._file_pid != os.getpid():
            self.close()
        if self._file is None:
            self._file = open(self.rec_path, "rb", buffering=0)
            self._file_pid = os.getpid()
        return self._file.fileno()

    def close(self) -> None:
        """Close this process's handle on the `.rec` file; the next read reopens it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_file_pid"] = None
        return state

    def _record_source(self, record: int) -> str:
        return f"{self.rec_path} record {record} (offset {self._offsets[record]})"


class RecordIODataset(RecordIOFile, FaceDataset):
    """The images of an insightface `.rec`/`.idx` pair; keys are `rec:<record index>`.

    Labels are the records' identity values remapped to 0..K-1 in sorted order;
    `identity_names[k]` / `identity_ids[k]` give the original value of label k. Opening reads
    every image record's header (one small read per record).
    """

    kind = "recordio"

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(rec_path, idx_path)
        self._records = self._image_records()  # arrays, not lists: the dataset is pickled to every dask worker
        raw_labels = np.asarray([self._read_identity(record) for record in self._records.tolist()], dtype=np.int64)
        self.identity_ids, labels = np.unique(raw_labels, return_inverse=True)
        self.identity_names = [str(identity) for identity in self.identity_ids.tolist()]
        self.labels = labels.astype(np.int64)
        self.keys = PackedStrings(f"{RECORD_KEY_PREFIX}{record}" for record in self._records.tolist())

    def _image_records(self) -> np.ndarray:
        """Records 1 .. label[0]-1 after an insightface header; otherwise every indexed record."""
        if not self._offsets:
            raise FacekdError(f"{self.idx_path}: index is empty (expected one 'index<TAB>offset' line per record)")
        if 0 in self._offsets:
            flag, values, _ = self._unpack_header(0, self._read_payload(0))
            if flag > 0:
                images_end = values[0]
                is_integer = math.isfinite(images_end) and images_end.is_integer()
                if not (is_integer and 2 <= images_end <= len(self._offsets)):
                    raise FacekdError(
                        f"{self._record_source(0)}: header label[0] = {images_end} should end the image records: "
                        f"an integer in 2..{len(self._offsets)} for the {len(self._offsets)} records in {self.idx_path}"
                    )
                records = np.arange(1, int(images_end), dtype=np.int64)
                missing = records[~self._offsets.contains(records)]
                if missing.size:
                    raise FacekdError(
                        f"{self.idx_path}: header record 0 says images are records 1..{int(images_end) - 1}, "
                        f"but record {missing[0]} is not in the index ({missing.size} missing)"
                    )
                return records
        return self._offsets.records

    def _read_identity(self, record: int) -> int:
        """The first label value of `record`, reading only the record's header bytes."""
        payload = self._read_payload(record, limit=IR_HEADER.size)
        if len(payload) == IR_HEADER.size and (flag := IR_HEADER.unpack(payload)[0]) > 0:
            payload = self._read_payload(record, limit=IR_HEADER.size + 4 * flag)
        _, values, _ = self._unpack_header(record, payload)
        identity = float(values[0])
        if not identity.is_integer() or identity < 0:
            raise FacekdError(
                f"{self._record_source(record)}: identity label {identity} is not a non-negative integer"
            )
        return int(identity)

    def read_bytes(self, index: int) -> bytes:
        return self.image_bytes(int(self._records[index]))

    def source(self, index: int) -> str:
        return self._record_source(int(self._records[index]))

    def fingerprint_items(self) -> list[bytes]:
        """Offset and stored extent of each record, known from the index without reading payloads."""
        offsets = self._offsets.offsets_of(self._records)
        boundaries = np.append(np.unique(self._offsets.offsets), self._rec_size)
        extent_ends = boundaries[np.searchsorted(boundaries, offsets) + 1]
        return [f"{offset}:{end - offset}".encode() for offset, end in zip(offsets.tolist(), extent_ends.tolist())]


class RecordIOImages(RecordIOFile, KeyedImages):
    """Images of a `.rec`/`.idx` pair by key (`rec:<record index>`): reads the index, then only those records."""

    def record_of(self, key: str) -> int:
        record = key.removeprefix(RECORD_KEY_PREFIX)
        known = record.isdigit() and len(record) <= LARGEST_INT64_DIGITS and int(record) in self._offsets
        if not (key.startswith(RECORD_KEY_PREFIX) and known):
            raise FacekdError(
                f"{self.idx_path}: no record for key {key!r} (expected '{RECORD_KEY_PREFIX}<record index>' "
                f"of a record in this index; has the dataset changed since the keys were taken?)"
            )
        return int(record)

    def read_bytes(self, key: str) -> bytes:
        return self.image_bytes(self.record_of(key))

    def source(self, key: str) -> str:
        return self._record_source(self.record_of(key))


class RecordOffsets:
    """An index's record -> byte offset as int64 arrays in file order, looked up through a sorted copy.

    A dict of a million Python ints would be pickled, entry by entry, to every dask worker.
    """

    def __init__(self, offsets: dict[int, int], idx_path: Path) -> None:
        try:
            self.records = np.fromiter(offsets.keys(), dtype=np.int64, count=len(offsets))
            self.offsets = np.fromiter(offsets.values(), dtype=np.int64, count=len(offsets))
        except OverflowError:
            raise FacekdError(f"{idx_path}: a record index or offset does not fit in 64 bits") from None
        self._order = np.argsort(self.records, kind="stable")
        self._sorted_records = self.records[self._order]

    def __len__(self) -> int:
        return len(self.records)

    def contains(self, records: np.ndarray) -> np.ndarray:
        """Whether each of `records` is in the index."""
        if not len(self):
            return np.zeros(len(records), dtype=bool)
        positions = np.minimum(np.searchsorted(self._sorted_records, records), len(self) - 1)
        return self._sorted_records[positions] == records

    def offsets_of(self, records: np.ndarray) -> np.ndarray:
        """The byte offsets of `records`, each of which must be in the index."""
        return self.offsets[self._order[np.searchsorted(self._sorted_records, records)]]

    def __contains__(self, record: int) -> bool:
        return bool(self.contains(np.array([record], dtype=np.int64))[0])

    def __getitem__(self, record: int) -> int:
        if record not in self:
            raise KeyError(record)
        return int(self.offsets_of(np.array([record], dtype=np.int64))[0])


def default_idx_path(rec_path: Path) -> Path:
    """The index next to a .rec file, its suffix in the same case (train.rec -> train.idx, LFW.REC -> LFW.IDX)."""
    return rec_path.with_suffix(".IDX" if rec_path.suffix.isupper() else ".idx")


def read_idx(idx_path: Path) -> dict[int, int]:
    """Record index -> byte offset, in file order, from "index<TAB>offset" lines.

    An index in MXNet's own spelling is parsed in one vectorised pass (`tab_separated_offsets`);
    any other file goes through `read_idx_line_by_line`, which accepts what it accepts and names
    the file, line and content of what it does not.
    """
    data = idx_path.read_bytes()
    offsets = tab_separated_offsets(data)
    return offsets if offsets is not None else read_idx_line_by_line(idx_path, data)


def tab_separated_offsets(data: bytes) -> dict[int, int] | None:
    """`read_idx`'s result for lines of "digits<TAB>digits" (LF or CRLF, blank lines allowed), else None.

    None for anything else -- spaces, signs, a lone CR, a line without exactly one tab, a number of
    more than 18 digits (int64), a record listed twice -- so the line-by-line parser decides.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data.translate(None, b"0123456789\t\n"):
        return None
    as_array = np.frombuffer(data, dtype=np.uint8)
    tabs = np.flatnonzero(as_array == ord("\t"))
    if tabs.size == 0:
        return {} if not data.strip(b"\n") else None
    line_ends = np.flatnonzero(as_array == ord("\n"))
    if not data.endswith(b"\n"):
        line_ends = np.append(line_ends, len(data))
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    filled = line_ends > line_starts
    if tabs.size != np.count_nonzero(filled):
        return None
    record_digits = tabs - line_starts[filled]
    offset_digits = line_ends[filled] - tabs - 1
    digit_counts = np.concatenate((record_digits, offset_digits))
    if not 1 <= digit_counts.min() <= digit_counts.max() <= LARGEST_INT64_DIGITS:
        return None  # not each filled line "digits<TAB>digits" (its tab strictly inside it), or too long for int64
    values = np.fromstring(data, dtype=np.int64, sep=" ")  # text mode: any whitespace separates
    records = values[0::2].tolist()
    offsets = dict(zip(records, values[1::2].tolist()))
    return offsets if len(offsets) == len(records) else None


def read_idx_line_by_line(idx_path: Path, data: bytes) -> dict[int, int]:
    """`read_idx` of `data`, the bytes of `idx_path`, one text line at a time (any whitespace, CR, LF or CRLF)."""
    offsets: dict[int, int] = {}
    lines = io.TextIOWrapper(io.BytesIO(data), encoding="ascii", errors="replace")
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            raise FacekdError(
                f"{idx_path} line {line_number}: expected '<record index><TAB><byte offset>' "
                f"(two non-negative integers), got {line.rstrip()!r}"
            )
        record, offset = int(fields[0]), int(fields[1])
        if record in offsets:
            raise FacekdError(f"{idx_path} line {line_number}: record {record} is listed twice")
        offsets[record] = offset
    return offsets


def padded(length: int) -> int:
    return (length + 3) // 4 * 4


def encode_record(payload: bytes) -> bytes:
    """One RecordIO record, split wherever the magic sits at a 4-aligned position (as MXNet does)."""
    if len(payload) > LENGTH_MASK:
        raise FacekdError(f"RecordIO payload of {len(payload)} bytes exceeds the {LENGTH_MASK}-byte limit")
    splits = list(aligned_magic_positions(payload))
    starts = [0] + [split + 4 for split in splits]
    ends = splits + [len(payload)]
    flags = [WHOLE] if not splits else [FIRST] + [MIDDLE] * (len(splits) - 1) + [LAST]
    chunks = []
    for start, end, cflag in zip(starts, ends, flags):
        chunks.append(PART_HEADER.pack(MAGIC, cflag << 29 | (end - start)))
        chunks.append(payload[start:end] + bytes(padded(end - start) - (end - start)))
    return b"".join(chunks)


def aligned_magic_positions(payload: bytes) -> Iterator[int]:
    position = payload.find(MAGIC_BYTES)
    while position != -1:
        if position % 4 == 0:
            yield position
        position = payload.find(MAGIC_BYTES, position + 1)


def header_record(images_end: int) -> bytes:
    """insightface's record 0: flag 2, label (images_end, images_end) -- no identity records follow."""
    return encode_record(IR_HEADER.pack(2, 0.0, 0, 0) + struct.pack("<2f", images_end, images_end))


def write_recordio(
    rec_path: str | os.PathLike[str],
    idx_path: str | os.PathLike[str],
    samples: Iterable[tuple[int, bytes]],
) -> int:
    """Write (identity label, encoded image) samples in insightface's layout; returns the image count.

    Images become records 1..N with flag 0 and a float32 label; record 0 is the header with
    flag 2 and label (N + 1, N + 1), i.e. images end at N + 1 and there are no identity
    records. Both files appear under their names only once both are complete (`written_together`).
    """
    with written_together(rec_path, idx_path) as (rec_partial, idx_partial):
        with open(rec_partial, "wb") as rec_file, open(idx_partial, "w", encoding="ascii") as idx_file:
            rec_file.write(header_record(0))  # placeholder, same size: rewritten once N is known
            idx_file.write("0\t0\n")
            count = 0
            for count, (label, image) in enumerate(samples, start=1):
                if not 0 <= label <= LARGEST_EXACT_LABEL:
                    raise FacekdError(
                        f"sample {count - 1}: label {label} is outside 0..{LARGEST_EXACT_LABEL} "
                        f"(RecordIO stores labels as float32)"
                    )
                idx_file.write(f"{count}\t{rec_file.tell()}\n")
                rec_file.write(encode_record(IR_HEADER.pack(0, float(label), count, 0) + image))
            rec_file.seek(0)
            rec_file.write(header_record(count + 1))
    return count
