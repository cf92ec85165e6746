"""Showing a few images of a large dataset, and writing the suspicious pairs, before and after issue 14, same run.

    .venv/bin/python bench/inspection.py [--images 200000] [--records 200000] [--shown 40] [--repeats 3]
                                         [--suspicious-rows 0] [--rows-per-pass 2097152] [--json FILE]

Loading: `facekd pairs top --paths` and `facekd pairs sheet` load the `--shown` images of the pairs
they show. Before, they listed the whole dataset (`open_dataset`: every file of an image folder
listed and stat-ed, every record header of a RecordIO file read) and loaded rows of it (the
baseline); now they open the images by their store keys (`open_keyed_images`). Both are timed on
an image folder of `--images` files (the shown ones are real JPEGs, the rest empty files) and on a
RecordIO set of `--records` records, the two ways taking turns `--repeats` times; medians.
The folders are freshly written, so the file system's caches are warm.

Memory and time (with `--suspicious-rows N`): `facekd mine` writes every hard negative at or above
`mine.suspicious_threshold` to a CSV. On a synthetic pair table of N such rows (each unordered
pair mined from both ends, as usual), the peak resident memory and the wall time of writing that
CSV: all pairs and their described records in memory (the first way, before the streaming), the
same bounded passes written record by record (a `PairRecord` per pair, formatted one by one: the
writer before the column-wise one), and `write_suspicious_csv` in one pass and in its bounded
passes of `--rows-per-pass` rows. Each is measured in its own child process (`ru_maxrss`), forked
from a lean fork server: a child started by exec would report this process's peak, as Linux
carries `ru_maxrss` across (v)fork + exec. The CSVs must be byte-identical.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from pipeline.data.open import open_dataset, open_keyed_images
from pipeline.data.recordio import write_recordio
from pipeline.stage_one.pair_queries import (
    DESCRIBED_ROWS, PAIR_RECORD_FIELDS, SUSPICIOUS_ROWS_PER_PASS, describe_pairs, suspicious_pair_passes,
    suspicious_pairs, write_suspicious_csv,
)
from pipeline.stage_one.pair_table import CHECKED_DATASETS, HARD_NEGATIVE, Pairs, PairTable
from pipeline.stage_one.store import EmbeddingStore

IMAGES_PER_IDENTITY = 50  # MS1MV2: 5.8 M images of 85 k identities, ~68 each
NEGATIVES_PER_ANCHOR = 8  # mine.hard_negatives_per_anchor
SUSPICIOUS_THRESHOLD = 0.7  # mine.suspicious_threshold


def shown_jpegs(count: int) -> list[bytes]:
    """`count` different 112 x 112 JPEGs, the field's face size."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
        encoded.append(out.getvalue())
    return encoded


def write_image_folder(root: Path, num_images: int, shown: list[bytes]) -> list[tuple[int, str]]:
    """`root/idNNNNNN/NNN.jpg`: the shown images spread evenly and real, the rest empty; their (row, key)."""
    shown_rows = dict(zip(np.linspace(0, num_images - 1, len(shown)).astype(int).tolist(), shown))
    for row in range(num_images):
        identity, image = divmod(row, IMAGES_PER_IDENTITY)
        if image == 0:
            (root / f"id{identity:06d}").mkdir(parents=True)
        (root / f"id{identity:06d}" / f"{image:03d}.jpg").write_bytes(shown_rows.get(row, b""))
    return [(row, f"id{row // IMAGES_PER_IDENTITY:06d}/{row % IMAGES_PER_IDENTITY:03d}.jpg") for row in shown_rows]


def write_record_set(root: Path, num_records: int, shown: list[bytes]) -> list[tuple[int, str]]:
    """`root/train.rec` + `.idx` of `num_records` images (the shown ones real, the rest 100-byte stubs); their (row, key)."""
    shown_rows = dict(zip(np.linspace(0, num_records - 1, len(shown)).astype(int).tolist(), shown))
    samples = ((row // IMAGES_PER_IDENTITY, shown_rows.get(row, b"\xff\xd8" + bytes(98))) for row in range(num_records))
    root.mkdir()
    write_recordio(root / "train.rec", root / "train.idx", samples)
    return [(row, f"rec:{row + 1}") for row in shown_rows]  # images are records 1..N


def load_by_listing(root: Path, shown: list[tuple[int, str]]) -> list[np.ndarray]:
    """As before: list the dataset, check each store key against the row's, load the rows."""
    dataset = open_dataset(root)
    assert all(dataset.keys[row] == key for row, key in shown)
    return [dataset.load(row) for row, _ in shown]


def load_by_key(root: Path, shown: list[tuple[int, str]]) -> list[np.ndarray]:
    images = open_keyed_images(root)
    return [images.load(key) for _, key in shown]


def time_loading(name: str, root: Path, shown: list[tuple[int, str]], repeats: int) -> dict:
    times: dict[str, list[float]] = {"listing": [], "by_key": []}
    for _ in range(repeats):
        for method, load in (("listing", load_by_listing), ("by_key", load_by_key)):
            started = time.perf_counter()
            load(root, shown)
            times[method].append(time.perf_counter() - started)
    listing, by_key = statistics.median(times["listing"]), statistics.median(times["by_key"])
    print(f"{name}, {len(shown)} shown images, medians of {repeats} interleaved runs:")
    print(f"  listing the dataset (open_dataset, before): {listing:.3f} s")
    print(f"  by key (open_keyed_images, now): {by_key:.4f} s = {listing / by_key:.0f}x faster")
    return dict(listing_s=listing, by_key_s=by_key, ratio=listing / by_key)


def write_pair_table(folder: Path, num_rows: int) -> tuple[Path, Path]:
    """A store of num_rows / 8 images and a pair table of 8 hard negatives per anchor, all at or above the
    threshold; partners at +-1..4 identities, so each unordered pair appears from both ends, with one similarity."""
    sys.path.insert(0, str(Path(__file__).parent))
    from exact_knn import write_store  # the bench store writer: float16, as embed writes

    from pipeline.hdf5 import written_hdf5
    from pipeline.stage_one.pair_table import PairTableWriter

    num_anchors = max(num_rows // NEGATIVES_PER_ANCHOR, 10 * IMAGES_PER_IDENTITY)
    labels = np.arange(num_anchors) // IMAGES_PER_IDENTITY
    store_path, table_path = folder / "store.h5", folder / "pairs.h5"
    write_store(store_path, np.random.default_rng(0).normal(size=(num_anchors, 8)).astype(np.float32), labels)
    steps = IMAGES_PER_IDENTITY * np.array([1, -1, 2, -2, 3, -3, 4, -4])
    with EmbeddingStore(store_path) as store, written_hdf5(table_path, CHECKED_DATASETS) as (h5file, checksum):
        writer = PairTableWriter(h5file, {"store_provenance_hash": store.provenance_hash}, checksum)
        for start in range(0, num_anchors, 1 << 16):
            anchor = np.arange(start, min(start + (1 << 16), num_anchors))[:, None]
            partner = (anchor + steps) % num_anchors
            low, high = np.minimum(anchor, partner), np.maximum(anchor, partner)
            similarity = SUSPICIOUS_THRESHOLD + (1 - SUSPICIOUS_THRESHOLD) * ((low * 7919 + high * 104729) % 65521) / 65521
            order = np.argsort(-similarity, axis=1, kind="stable")
            writer.append(dict(
                anchor=np.broadcast_to(anchor, partner.shape).ravel(), partner=np.take_along_axis(partner, order, 1).ravel(),
                similarity=np.take_along_axis(similarity, order, 1).ravel().astype(np.float32),
                same_identity=np.zeros(partner.size, np.uint8), kind=np.full(partner.size, HARD_NEGATIVE, np.uint8),
                rank=np.tile(np.arange(NEGATIVES_PER_ANCHOR, dtype=np.int32), len(anchor)),
            ))
        writer.finish(np.arange(num_anchors + 1, dtype=np.int64) * NEGATIVES_PER_ANCHOR)
    return store_path, table_path


def write_records_csv(path: Path, parts: Iterable[Pairs], store: EmbeddingStore, described_rows: int) -> None:
    """The baseline writers: a `PairRecord` per pair, each formatted and written on its own."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(PAIR_RECORD_FIELDS)
        for part in parts:
            for start in range(0, len(part), described_rows):
                for record in describe_pairs(part.take(slice(start, start + described_rows)), store):
                    writer.writerow([f"{value:.6f}" if isinstance(value, float) else value for value in vars(record).values()])


def write_csv_measured(way: str, store_path: Path, table_path: Path, csv_path: Path, rows_per_pass: int) -> dict:
    """In a fresh process: write the suspicious-pairs CSV one `way`; its peak RSS, the RSS before, the time, and the CSV's digest."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with EmbeddingStore(store_path) as store, PairTable(table_path) as table:
        if way == "all at once":
            found = suspicious_pairs(table, SUSPICIOUS_THRESHOLD)
            write_records_csv(csv_path, [found], store, max(len(found), 1))
        elif way == "records, bounded passes":
            write_records_csv(csv_path, suspicious_pair_passes(table, SUSPICIOUS_THRESHOLD, rows_per_pass), store, DESCRIBED_ROWS)
        else:
            write_suspicious_csv(csv_path, table, store, SUSPICIOUS_THRESHOLD, rows_per_pass or len(table))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(peak_mib=peak / 1024, before_mib=before / 1024, seconds=seconds,
                sha256=hashlib.sha256(csv_path.read_bytes()).hexdigest())


def measure_suspicious(folder: Path, num_rows: int, rows_per_pass: int) -> dict:
    store_path, table_path = write_pair_table(folder, num_rows)
    ways = {
        "all at once": ("every pair and its record in memory (before)", 0),
        "records, bounded passes": (f"a record per pair, passes of {rows_per_pass} rows", rows_per_pass),
        "one pass": ("write_suspicious_csv, one pass", 0),
        "bounded passes": (f"write_suspicious_csv, passes of {rows_per_pass} rows", rows_per_pass),
    }
    results = {}
    context = multiprocessing.get_context("forkserver")  # not "spawn": its children inherit this process's peak
    for way, (_, passes_of) in ways.items():
        with context.Pool(1) as pool:
            results[way] = pool.apply(write_csv_measured, (way, store_path, table_path, folder / f"{way}.csv", passes_of))
    with PairTable(table_path) as table:
        num_rows = len(table)
    rows_written = (folder / "one pass.csv").read_bytes().count(b"\n") - 1
    print(f"suspicious-pairs CSV: {num_rows} suspicious rows = {rows_written} pairs; peak RSS of each child process, "
          f"and its rise over the {results['all at once']['before_mib']:.0f} MiB it held before writing:")
    rise = {way: result["peak_mib"] - result["before_mib"] for way, result in results.items()}
    for way, (description, _) in ways.items():
        print(f"  {description}: {results[way]['peak_mib']:.0f} MiB, +{rise[way]:.0f} MiB "
              f"({rise[way] / rise['all at once']:.2f}x before's rise); {results[way]['seconds']:.1f} s "
              f"({results['records, bounded passes']['seconds'] / results[way]['seconds']:.2f}x as fast as a record per pair)")
    same = len({result["sha256"] for result in results.values()}) == 1
    print(f"  the {len(results)} CSVs are byte-identical: {same}")
    return dict(rows=num_rows, pairs=rows_written, rows_per_pass=rows_per_pass, same_csv=same, ways=results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--shown", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--suspicious-rows", type=int, default=0, help="Also measure the CSV's peak memory on this many rows.")
    parser.add_argument("--rows-per-pass", type=int, default=SUSPICIOUS_ROWS_PER_PASS)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    shown = shown_jpegs(args.shown)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        folder_shown = write_image_folder(Path(folder) / "faces", args.images, shown)
        print(f"wrote {args.images} files in {args.images // IMAGES_PER_IDENTITY} identity folders "
              f"in {time.perf_counter() - started:.1f} s")
        results["image_folder"] = time_loading(f"image folder of {args.images} files", Path(folder) / "faces",
                                               folder_shown, args.repeats)
        record_shown = write_record_set(Path(folder) / "rec", args.records, shown)
        results["recordio"] = time_loading(f"RecordIO set of {args.records} records", Path(folder) / "rec",
                                           record_shown, args.repeats)
        if args.suspicious_rows:
            results["suspicious_csv"] = measure_suspicious(Path(folder), args.suspicious_rows, args.rows_per_pass)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
