"""`facekd ablation`: method.md's ablation rows (or a tuning sweep) over several seeds, as a table."""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.params import load_section


@click.command("ablation")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--section", "section_name", default="ablation", show_default=True,
              help="Section with `rows` (overrides of `train`), `seeds`, `out_root`, `table`.")
@click.option("--rows", "only_rows", default=None, help="Comma-separated subset of the rows to run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ablation(params_path: str, section_name: str, only_rows: str | None, quiet: bool) -> None:
    """Train every row under every seed, evaluate on the first `evaluate.pairs` set, write a markdown table."""
    from pipeline.evaluation.ablation import markdown_table, run_rows
    from pipeline.evaluation.evaluate import evaluate_pairs, summary_metrics
    from pipeline.files import write_text_atomically
    from pipeline.face_model import file_sha256
    from pipeline.stage_two.train import train
    from stages.evaluate import open_model, pair_sets
    from stages.train import merged_section, training_inputs
    from stages.training import compile_where_safe, memory_budget_bytes, train_config_from

    section = load_section(params_path, section_name)
    rows = section.get("rows", dict)
    sections = {name: merged_section(params_path, f"{section_name}.rows", name, overrides) for name, overrides in rows.items()}
    configs = {name: train_config_from(row) for name, row in sections.items()}
    # Loaded for every row of the section, so that the data fingerprint recorded with each run
    # does not depend on which rows `--rows` picks (a subset must reuse a full run's results).
    inputs = training_inputs(next(iter(sections.values())), list(configs.values()))
    images_budget = memory_budget_bytes(next(iter(sections.values())), "images_memory_gb", 2.0)
    if only_rows:
        unknown = sorted(set(only_rows.split(",")) - set(rows))
        if unknown:
            raise click.ClickException(f"{params_path}: {section_name}.rows has no rows {unknown}")
        configs = {name: configs[name] for name in only_rows.split(",")}
    configs = dict(zip(configs, compile_where_safe(list(configs.values()), inputs.dataset, inputs.usable)))
    evaluation = load_section(params_path, "evaluate")
    pair_set_name, pairs = next(iter(pair_sets(evaluation).items()))
    folds = evaluation.positive("folds")

    def evaluate_one(model_path: Path, as_teacher: bool = False) -> dict:
        return summary_metrics(evaluate_pairs(open_model(params_path, model_path, as_teacher), pairs, folds))

    def train_one(config, out_dir: Path) -> None:
        train(
            config, inputs.dataset, out_dir, images_memory_bytes=images_budget, progress=not quiet,
            **inputs.train_arguments(),
        )

    out_root = Path(section.get("out_root", str))
    results = run_rows(configs, section.get("seeds", list), out_root, train_one, evaluate_one, inputs.fingerprint(), click.echo)
    teacher_path = Path(load_section(params_path, "embed").get("teacher", str))
    teacher_cache = out_root / f"teacher_{file_sha256(teacher_path)[:16]}_{pair_set_name}.json"
    if not teacher_cache.is_file():
        write_text_atomically(teacher_cache, json.dumps(evaluate_one(teacher_path, as_teacher=True), indent=2, sort_keys=True))
    table = markdown_table(results, json.loads(teacher_cache.read_text()), pair_set_name)
    table_path = Path(section.get("table", str))
    write_text_atomically(table_path, table)
    click.echo(table)
    click.echo(f"table written to {table_path}")
