"""`facekd mine`: hard negatives and hard positives from the kNN result, into the pair table."""
from __future__ import annotations

import click

from stages.params import load_section


@click.command("mine")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def mine(params_path: str, quiet: bool) -> None:
    """Write the pair table, mining_summary.json, the similarity histogram and the suspicious pairs."""
    from pipeline.stage_one.mining import describe_pairs, mine_pairs, write_histogram_csv, write_pairs_csv, write_summary_json
    from pipeline.stage_one.store import EmbeddingStore

    section = load_section(params_path, "mine")
    with EmbeddingStore(section.get("store", str)) as store:
        summary = mine_pairs(
            store, section.get("knn", str), section.get("out", str),
            hard_negatives_per_anchor=section.positive("hard_negatives_per_anchor"),
            hard_positives_per_anchor=section.get("hard_positives_per_anchor", int),
            suspicious_threshold=section.get("suspicious_threshold", float),
            histogram_bins=section.positive("histogram_bins"),
            block_size=section.positive("block_size"),
            progress=not quiet,
        )
        write_pairs_csv(section.get("suspicious", str), describe_pairs(summary.suspicious, store))
    write_summary_json(section.get("summary", str), summary)
    write_histogram_csv(section.get("histogram", str), summary.negatives, summary.positives)
    click.echo(
        f"{summary.pairs_path}: {summary.negatives.count} hard negatives and {summary.positives.count} hard positives "
        f"of {summary.num_anchors} images; {len(summary.suspicious)} suspicious pairs "
        f"(different identities, similarity >= {summary.suspicious_threshold}) in {section.get('suspicious', str)}"
    )
