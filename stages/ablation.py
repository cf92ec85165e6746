"""`facekd ablation`: method.md's ablation rows (or a tuning sweep) over several seeds, as a table."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.errors import FacekdError
from pipeline.settings import SWEEPS
from stages.params import load_settings, required


@click.command("ablation")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--section", "section_name", default="ablation", show_default=True, type=click.Choice(SWEEPS),
              help="Section with `rows` (overrides of `train`), `seeds`, `out_root`, `table`.")
@click.option("--rows", "only_rows", default=None, help="Comma-separated subset of the rows to run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ablation(params_path: str, section_name: str, only_rows: str | None, quiet: bool) -> None:
    """Train every row under every seed, evaluate on the first `evaluate.pairs` set, write a markdown table."""
    from pipeline.evaluation.ablation import markdown_table, run_rows
    from pipeline.evaluation.evaluate import evaluate_pairs, summary_metrics
    from pipeline.evaluation.inputs import load_pair_sets, open_evaluated_model
    from pipeline.face_model import Preprocessing, file_sha256
    from pipeline.files import write_text_atomically
    from pipeline.stage_two.compile_choice import compile_where_safe
    from pipeline.stage_two.train import train
    from pipeline.stage_two.training_data import load_section_inputs

    settings = load_settings(params_path)  # once: every row below is already merged onto `train` and checked
    sweep, evaluation, embed = required(settings, params_path, section_name, "evaluate", "embed")
    configs = {name: row.training_config() for name, row in sweep.rows.items()}
    if only_rows:
        unknown = sorted(set(only_rows.split(",")) - set(sweep.rows))
        if unknown:
            raise FacekdError(f"{params_path}: {section_name}.rows has no rows {unknown}")
    # Loaded for every row of the section, so that the data fingerprint recorded with each run
    # does not depend on which rows `--rows` picks (a subset must reuse a full run's results).
    first_row = next(iter(sweep.rows.values()))
    inputs = load_section_inputs(first_row, list(configs.values()))
    if only_rows:
        configs = {name: configs[name] for name in only_rows.split(",")}
    compiled = compile_where_safe(list(configs.values()), inputs.dataset, inputs.usable, lambda line: click.echo(line, err=True))
    configs = dict(zip(configs, compiled))
    pair_set_name, pairs = next(iter(load_pair_sets(evaluation.pairs, f"{params_path}: evaluate.pairs").items()))
    teacher_preprocessing = Preprocessing(**embed.preprocessing.model_dump())

    def evaluate_one(model_path: Path, as_teacher: bool = False) -> dict:
        model = open_evaluated_model(evaluation, model_path, teacher_preprocessing if as_teacher else None)
        return summary_metrics(evaluate_pairs(model, pairs, evaluation.folds))

    def train_one(config, out_dir: Path) -> None:
        train(
            config, inputs.dataset, out_dir, images_memory_bytes=first_row.images_memory_bytes, progress=not quiet,
            **inputs.train_arguments(),
        )

    out_root = Path(sweep.out_root)
    results = run_rows(configs, sweep.seeds, out_root, train_one, evaluate_one, inputs.fingerprint(), click.echo)
    teacher_path = Path(embed.teacher)
    teacher_cache = out_root / f"teacher_{file_sha256(teacher_path)[:16]}_{pair_set_name}.json"
    if not teacher_cache.is_file():
        write_text_atomically(teacher_cache, json.dumps(evaluate_one(teacher_path, as_teacher=True), indent=2, sort_keys=True))
    table = markdown_table(results, json.loads(teacher_cache.read_text()), pair_set_name)
    write_text_atomically(sweep.table, table)
    click.echo(table)
    click.echo(f"table written to {sweep.table}")
