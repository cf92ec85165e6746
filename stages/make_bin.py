"""`facekd make-bin`: an insightface-style verification .bin from a set of face images."""
from __future__ import annotations

import click

from pipeline.data.config import VerificationConfig


@click.command("make-bin")
@click.argument("dataset", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--pairs", "num_pairs", default=VerificationConfig.model_fields["num_pairs"].default, show_default=True,
              help="Number of pairs (half same, half different).")
@click.option("--seed", default=VerificationConfig.model_fields["seed"].default, show_default=True, help="Seed of the pair drawing.")
def make_bin(dataset: str, out: str, num_pairs: int, seed: int) -> None:
    """Build an insightface-style verification .bin from an image folder (or RecordIO set)."""
    from pipeline.data.open import open_dataset
    from pipeline.data.verification_bin import make_bin_from_dataset

    make_bin_from_dataset(open_dataset(dataset), out, num_pairs, seed)
    click.echo(f"{out}: {num_pairs} pairs ({num_pairs // 2} same, {num_pairs // 2} different) from {dataset}")
