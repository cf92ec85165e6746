"""What `facekd mine` reports besides the pair table: similarity statistics, DVC metrics and plot data.

The statistics stream (memory independent of the number of pairs); the CSV and JSON outputs are
published atomically, like the table.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.files import opened_atomically, write_text_atomically

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
PERCENTILE_GRID_BINS = 2000  # percentiles are read to 0.001 from a grid over [-1, 1]


class SimilarityDistribution:
    """Streaming statistics of similarities in [-1, 1], memory independent of the number of pairs.

    `histogram` has the user's bins (for plots); mean is exact; percentiles are interpolated on a
    grid of 0.001.
    """

    def __init__(self, bins: int) -> None:
        self.edges = np.linspace(-1.0, 1.0, bins + 1)
        self.histogram = np.zeros(bins, np.int64)
        self.grid_edges = np.linspace(-1.0, 1.0, PERCENTILE_GRID_BINS + 1)
        self.grid = np.zeros(PERCENTILE_GRID_BINS, np.int64)
        self.count = 0
        self.total = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.clip(values, -1.0, 1.0)
        self.histogram += np.histogram(values, self.edges)[0]
        self.grid += np.histogram(values, self.grid_edges)[0]
        self.count += len(values)
        self.total += float(values.sum(dtype=np.float64))

    def percentile(self, q: float) -> float:
        cumulative = np.cumsum(self.grid)
        target = q / 100 * self.count
        bin_index = min(int(np.searchsorted(cumulative, target)), len(self.grid) - 1)
        before = cumulative[bin_index] - self.grid[bin_index]
        fraction = (target - before) / self.grid[bin_index] if self.grid[bin_index] else 0.0
        low, high = self.grid_edges[bin_index], self.grid_edges[bin_index + 1]
        return float(low + fraction * (high - low))

    def summary(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"pairs": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
        statistics = {f"p{q}": round(self.percentile(q), 4) for q in PERCENTILES}
        return {"pairs": self.count, "mean": round(self.total / self.count, 4), **statistics}


@dataclass(frozen=True)
class MiningSummary:
    pairs_path: Path
    num_images: int
    num_anchors: int
    knn_k: int
    anchors_without_negatives: int
    negatives: SimilarityDistribution
    positives: SimilarityDistribution
    suspicious_threshold: float
    suspicious_pairs: int

    def metrics(self) -> dict:
        """The numbers DVC tracks as metrics (mining_summary.json)."""
        return {
            "images": self.num_images,
            "anchors": self.num_anchors,
            "skipped_images": self.num_images - self.num_anchors,
            "knn_k": self.knn_k,
            "anchors_without_hard_negatives": self.anchors_without_negatives,
            "hard_negatives": self.negatives.summary(),
            "hard_positives": self.positives.summary(),
            "suspicious_threshold": self.suspicious_threshold,
            "suspicious_pairs": self.suspicious_pairs,
        }


def write_histogram_csv(path: str | Path, negatives: SimilarityDistribution, positives: SimilarityDistribution) -> None:
    """Bin centres and counts of both kinds: the data of a DVC plot (x = similarity)."""
    centres = (negatives.edges[:-1] + negatives.edges[1:]) / 2
    with opened_atomically(path, newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["similarity", "hard_negatives", "hard_positives"])
        for centre, negative_count, positive_count in zip(centres, negatives.histogram, positives.histogram):
            writer.writerow([f"{centre:.4f}", int(negative_count), int(positive_count)])


def write_summary_json(path: str | Path, summary: MiningSummary) -> None:
    write_text_atomically(path, json.dumps(summary.metrics(), indent=2, sort_keys=True) + "\n")
