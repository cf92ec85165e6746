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

from pipeline.data.verification_bin import VerificationPairs
from pipeline.errors import FacekdError
from pipeline.evaluation.config import EvaluateConfig, SweepConfig
from pipeline.evaluation.evaluate import evaluate_pairs, summary_metrics
from pipeline.evaluation.inputs import load_pair_sets, open_evaluated_model
from pipeline.face_model import file_sha256
from pipeline.files import write_text_atomically
from pipeline.stage_one.config import PreprocessingConfig
from pipeline.stage_two.compile_choice import compile_where_safe
from pipeline.stage_two.config import TrainConfig
from pipeline.stage_two.train import MODEL, train
from pipeline.stage_two.training_data import load_section_inputs

EVALUATION = "evaluation.json"
REPORTED_METRICS = ("accuracy", "tar_at_far_0.01", "tar_at_far_0.001")


def run_ablation(
    sweep: SweepConfig,
    evaluation: EvaluateConfig,
    teacher: str | Path,
    teacher_preprocessing: PreprocessingConfig,
    *,
    only_rows: list[str] | None,
    section_name: str,
    settings_file: str,
    progress: bool,
    log: Callable[[str], None],
    report: Callable[[str], None],
) -> str:
    """`facekd ablation`: train and evaluate every row of `sweep` (or `only_rows`) under every seed on
    the first pair set of `evaluation.pairs`; write the markdown table to `sweep.table` and return it.

    The teacher's row is evaluated once per teacher file and pair set, cached under `sweep.out_root`.
    `log` gets a line per run, `report` the torch.compile choices; `section_name` and `settings_file`
    (where `sweep` came from) are named in errors.
    """
    if only_rows:
        unknown = sorted(set(only_rows) - set(sweep.rows))
        if unknown:
            raise FacekdError(f"{settings_file}: {section_name}.rows has no rows {unknown}")
    configs = {name: row.training_config() for name, row in sweep.rows.items()}
    # Loaded for every row of the section, so that the data fingerprint recorded with each run
    # does not depend on which rows `only_rows` picks (a subset must reuse a full run's results).
    first_row = next(iter(sweep.rows.values()))
    inputs = load_section_inputs(first_row, list(configs.values()))
    if only_rows:
        configs = {name: configs[name] for name in only_rows}
    configs = dict(zip(configs, compile_where_safe(list(configs.values()), inputs.dataset, inputs.usable, report)))
    pair_set_name, pairs = next(iter(load_pair_sets(evaluation.pairs, f"{settings_file}: evaluate.pairs").items()))

    def train_one(config: TrainConfig, out_dir: Path) -> None:
        train(
            config, inputs.dataset, out_dir, images_memory_bytes=first_row.images_memory_bytes, progress=progress,
            **inputs.train_arguments(),
        )

    def evaluate_one(model_path: Path) -> dict[str, Any]:
        return _evaluate(evaluation, model_path, pairs, None)

    out_root = Path(sweep.out_root)
    results = run_rows(configs, sweep.seeds, out_root, train_one, evaluate_one, inputs.fingerprint(), log)
    teacher_cache = out_root / f"teacher_{file_sha256(Path(teacher))[:16]}_{pair_set_name}.json"
    if not teacher_cache.is_file():
        teacher_metrics = _evaluate(evaluation, Path(teacher), pairs, teacher_preprocessing)
        write_text_atomically(teacher_cache, json.dumps(teacher_metrics, indent=2, sort_keys=True))
    table = markdown_table(results, json.loads(teacher_cache.read_text()), pair_set_name)
    write_text_atomically(sweep.table, table)
    return table


def _evaluate(
    evaluation: EvaluateConfig, model_path: Path, pairs: VerificationPairs, teacher_preprocessing: PreprocessingConfig | None
) -> dict[str, Any]:
    """The scalar metrics of one model on `pairs` (a teacher with its own preprocessing)."""
    model = open_evaluated_model(evaluation, model_path, teacher_preprocessing)
    return summary_metrics(evaluate_pairs(model, pairs, evaluation.folds))


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
