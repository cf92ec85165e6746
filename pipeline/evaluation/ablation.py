"""Ablation runs: several training settings x several seeds, each evaluated, summarised as a table.

Every (row, seed) trains into its own folder and records its evaluation there together with the
settings and data it was made from. An interrupted ablation resumes where it stopped: a finished
run is read back only if its recorded settings and data are the ones asked for (else it is
trained again), and a half-trained one resumes from its checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.files import write_text_atomically
from pipeline.stage_two.config import TrainConfig
from pipeline.stage_two.train import MODEL

EVALUATION = "evaluation.json"
REPORTED_METRICS = ("accuracy", "tar_at_far_0.01", "tar_at_far_0.001")


@dataclass(frozen=True)
class RowResult:
    name: str
    per_seed: dict[int, dict[str, Any]]  # seed -> summary metrics on the pair set

    def values(self, metric: str) -> np.ndarray:
        return np.array([m[metric] for m in self.per_seed.values() if m.get(metric) is not None], dtype=float)


def _recorded_metrics(path: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics recorded at `path` if they were made by exactly `run` (settings and data)."""
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return recorded["metrics"] if recorded.get("run") == run else None


def run_rows(
    rows: dict[str, TrainConfig],
    seeds: list[int],
    out_root: str | Path,
    train_one: Callable[[TrainConfig, Path], None],
    evaluate_one: Callable[[Path], dict[str, Any]],
    data_fingerprint: str,
    log: Callable[[str], None] = print,
) -> list[RowResult]:
    """Train (`train_one(config, out_dir)`) and evaluate (`evaluate_one(onnx_path)`) every row under every seed."""
    results = []
    for name, config in rows.items():
        per_seed = {}
        for seed in seeds:
            seeded = config.model_copy(update={"seed": seed})
            out_dir = Path(out_root) / name / f"seed{seed}"
            run = {"config": json.loads(json.dumps(seeded.model_dump())), "data": data_fingerprint}
            metrics = _recorded_metrics(out_dir / EVALUATION, run)
            if metrics is None:
                log(f"ablation: training {name}, seed {seed}")
                train_one(seeded, out_dir)
                metrics = evaluate_one(out_dir / MODEL)
                write_text_atomically(out_dir / EVALUATION, json.dumps({"run": run, "metrics": metrics}, indent=2, sort_keys=True))
            per_seed[seed] = metrics
            log(f"ablation: {name}, seed {seed}: accuracy {metrics['accuracy']:.4f}")
        results.append(RowResult(name, per_seed))
    return results


def _mean_std(values: np.ndarray, scale: float = 100.0) -> str:
    """Mean ± sample std; a single seed has no spread to show, so just its value."""
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.2f}"
    return f"{scale * values.mean():.2f} ± {scale * values.std(ddof=1):.2f}"


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
