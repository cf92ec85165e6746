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
    from pipeline.ablation import evaluate_model, markdown_table, run_rows
    from pipeline.data.verification_bin import load_pair_set
    from pipeline.train import train
    from stages.train import merged_section, training_inputs
    from stages.training import train_config_from

    section = load_section(params_path, section_name)
    rows = section.get("rows", dict)
    if only_rows:
        unknown = sorted(set(only_rows.split(",")) - set(rows))
        if unknown:
            raise click.ClickException(f"{params_path}: {section_name}.rows has no rows {unknown}")
        rows = {name: rows[name] for name in only_rows.split(",")}
    sections = {name: merged_section(params_path, f"{section_name}.rows", name, overrides) for name, overrides in rows.items()}
    configs = {name: train_config_from(row) for name, row in sections.items()}
    inputs = training_inputs(
        next(iter(sections.values())),
        any(c.distillation.uses_teacher for c in configs.values()),
        any(c.sampler == "pairs" for c in configs.values()),
    )
    dataset = inputs.pop("dataset")
    pairs_path = load_section(params_path, "evaluate").get("pairs", list)[0]
    pairs = load_pair_set(pairs_path)
    out_root = Path(section.get("out_root", str))

    def train_one(config, out_dir):
        train(config, dataset, out_dir, progress=not quiet, **inputs)

    results = run_rows(configs, section.get("seeds", list), out_root, train_one, pairs, click.echo)
    teacher_cache = out_root / "teacher_evaluation.json"
    if not teacher_cache.is_file():
        teacher_cache.parent.mkdir(parents=True, exist_ok=True)
        teacher_path = load_section(params_path, "embed").get("teacher", str)
        teacher_cache.write_text(json.dumps(evaluate_model(Path(teacher_path), pairs), indent=2, sort_keys=True))
    table = markdown_table(results, json.loads(teacher_cache.read_text()), Path(pairs_path).stem)
    table_path = Path(section.get("table", str))
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(table)
    click.echo(table)
    click.echo(f"table written to {table_path}")
