"""Ablation runs: several training settings x several seeds, each evaluated, summarised as a table.

Every (row, seed) trains into its own folder and records its evaluation there, so an interrupted
ablation resumes where it stopped (finished runs are read back, a half-trained one resumes from
its checkpoint).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.data.verification_bin import VerificationPairs
from pipeline.evaluate import evaluate_pairs, summary_metrics
from pipeline.teacher import OnnxTeacher
from pipeline.train import MODEL, TrainConfig

EVALUATION = "evaluation.json"
REPORTED_METRICS = ("accuracy", "tar_at_far_0.01", "tar_at_far_0.001")


@dataclass(frozen=True)
class RowResult:
    name: str
    per_seed: dict[int, dict[str, Any]]  # seed -> summary metrics on the pair set

    def values(self, metric: str) -> np.ndarray:
        return np.array([m[metric] for m in self.per_seed.values() if m.get(metric) is not None], dtype=float)


def evaluate_model(model_path: Path, pairs: VerificationPairs) -> dict[str, Any]:
    return summary_metrics(evaluate_pairs(OnnxTeacher(model_path, threads=0), pairs))


def run_rows(
    rows: dict[str, TrainConfig],
    seeds: list[int],
    out_root: str | Path,
    train_one: Callable[[TrainConfig, Path], None],
    pairs: VerificationPairs,
    log: Callable[[str], None] = print,
) -> list[RowResult]:
    """Train and evaluate every row under every seed; `train_one(config, out_dir)` trains one run."""
    results = []
    for name, config in rows.items():
        per_seed = {}
        for seed in seeds:
            out_dir = Path(out_root) / name / f"seed{seed}"
            evaluation = out_dir / EVALUATION
            if not evaluation.is_file():
                log(f"ablation: training {name}, seed {seed}")
                train_one(replace(config, seed=seed), out_dir)
                metrics = evaluate_model(out_dir / MODEL, pairs)
                evaluation.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            per_seed[seed] = json.loads(evaluation.read_text())
            log(f"ablation: {name}, seed {seed}: accuracy {per_seed[seed]['accuracy']:.4f}")
        results.append(RowResult(name, per_seed))
    return results


def _mean_std(values: np.ndarray, scale: float = 100.0) -> str:
    if len(values) == 0:
        return "-"
    return f"{scale * values.mean():.2f} ± {scale * values.std(ddof=1 if len(values) > 1 else 0):.2f}"


def markdown_table(results: list[RowResult], teacher: dict[str, Any] | None, pair_set: str) -> str:
    """Mean ± sample std over seeds (in %) of accuracy and TAR@FAR, one row per setting."""
    header = (
        f"| setting ({pair_set}) | seeds | accuracy % | TAR@FAR=1e-2 % | TAR@FAR=1e-3 % | accuracy per seed % |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    if teacher is not None:
        lines.append(
            f"| teacher | - | {100 * teacher['accuracy']:.2f} | "
            + " | ".join("-" if teacher.get(m) is None else f"{100 * teacher[m]:.2f}" for m in REPORTED_METRICS[1:])
            + " | - |"
        )
    for row in results:
        per_seed = ", ".join(f"{100 * m['accuracy']:.2f}" for m in row.per_seed.values())
        cells = " | ".join(_mean_std(row.values(metric)) for metric in REPORTED_METRICS)
        lines.append(f"| {row.name} | {len(row.per_seed)} | {cells} | {per_seed} |")
    return header + "\n".join(lines) + "\n"
