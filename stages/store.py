"""`facekd store ...`: inspect embedding stores."""
from __future__ import annotations

import json

import click
import numpy as np


@click.group("store")
def store() -> None:
    """Inspect HDF5 embedding stores."""


@store.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--max-skipped", default=20, show_default=True, type=click.IntRange(min=0), help="How many skipped keys to list.")
@click.option("--verify", is_flag=True, help="Also read the whole store and check it against its content checksum.")
def info(path: str, max_skipped: int, verify: bool) -> None:
    """Provenance, counts, embedding-norm statistics and skipped keys of a store."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.stage_one.inspection import NORM_STATISTICS, norm_statistics
    from pipeline.stage_one.store import EmbeddingStore

    console = Console()
    with EmbeddingStore(path) as opened:
        if verify:
            opened.verify()
        provenance = Table(title=f"{path}: provenance", show_header=False)
        provenance.add_column("field")
        provenance.add_column("value", overflow="fold")
        for name, value in opened.provenance.items():
            shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
            provenance.add_row(name, shown)
        console.print(provenance)

        counts = Table(title="counts", show_header=False)
        counts.add_row("images", str(len(opened)))
        counts.add_row("identities", str(len(opened.identity_names)))
        counts.add_row("skipped images", str(int(opened.skipped.sum())))
        counts.add_row("embedding", f"{opened.embedding_dim}-d {opened.embeddings.dtype}, image + flip")
        if verify:
            counts.add_row("content checksum", f"{opened.content_checksum} (verified)")
        console.print(counts)

        statistics = Table(title="embedding norms")
        for column in ("view", *NORM_STATISTICS):
            statistics.add_column(column, justify="right")
        for view, values in norm_statistics(opened.read_norms(), opened.skipped).items():
            statistics.add_row(view, *(f"{values[name]:.3f}" for name in NORM_STATISTICS))
        console.print(statistics)

        skipped_indices = np.flatnonzero(opened.skipped)
        if len(skipped_indices):
            keys = opened.keys
            listing = Table(title=f"skipped keys ({len(skipped_indices)})")
            listing.add_column("index", justify="right")
            listing.add_column("key")
            for index in skipped_indices[:max_skipped]:
                listing.add_row(str(index), keys[index])
            console.print(listing)
            if len(skipped_indices) > max_skipped:
                console.print(f"... and {len(skipped_indices) - max_skipped} more (--max-skipped)")

