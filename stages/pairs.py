"""`facekd pairs ...`: look at what was mined: the hardest pairs, a contact sheet, the suspicious pairs.

Paths default to params.yaml's `mine` section (mine.out, mine.store); --pairs / --store override.
Only the selected pairs' keys (and, for a sheet, images) are read, so a table of millions of
pairs is fine.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click

from stages.params import load_settings, required

KINDS = {"negative": 0, "positive": 1}


def _path_options(command):
    command = click.option("--store", "store_path", default=None, help="Embedding store. Default: mine.store.")(command)
    command = click.option("--pairs", "pairs_path", default=None, help="Pair table. Default: mine.out.")(command)
    return click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")(command)


def _selection_options(command):
    command = click.option("--image", default=None, help="Only pairs of the image with this key.")(command)
    command = click.option("--identity", default=None, help="Only pairs whose anchor has this identity name.")(command)
    command = click.option("--n", "count", default=20, show_default=True, type=click.IntRange(min=1), help="How many pairs.")(command)
    return click.option(
        "--kind", type=click.Choice(sorted(KINDS)), default="negative", show_default=True,
        help="negative: other identities the teacher finds most similar; positive: own identity, least similar.",
    )(command)


@contextmanager
def _opened(params_path: str, pairs_path: str | None, store_path: str | None) -> Iterator[tuple]:
    """The pair table and the store it was mined from (checked), paths from params unless given."""
    from pipeline.stage_one.pair_table import PairTable
    from pipeline.stage_one.store import EmbeddingStore

    if pairs_path is None or store_path is None:
        config = required(load_settings(params_path), params_path, "mine")
        pairs_path = pairs_path or config.out
        store_path = store_path or config.store
    with EmbeddingStore(store_path) as store, PairTable(pairs_path) as table:
        table.check_store(store)
        yield table, store


def _selected(table, store, kind: str, count: int, identity: str | None, image: str | None) -> list:
    from pipeline.stage_one.inspection import anchor_rows
    from pipeline.stage_one.pair_queries import describe_pairs, hardest_pairs

    if identity is not None and image is not None:
        raise click.UsageError("give --identity or --image, not both")
    return describe_pairs(hardest_pairs(table, KINDS[kind], count, anchor_rows(store, identity, image)), store)


def _pair_table(title: str, records: list, sources: dict[str, str] | None = None):
    from rich.table import Table

    table = Table(title=title)
    for column in ("#", "similarity", "kind", "anchor key", "anchor identity", "partner key", "partner identity"):
        table.add_column(column, overflow="fold", justify="right" if column in ("#", "similarity") else "left")
    if sources is not None:
        table.add_column("anchor path", overflow="fold")
        table.add_column("partner path", overflow="fold")
    for number, record in enumerate(records, 1):
        row = [
            str(number), f"{record.similarity:.4f}", f"{record.kind} #{record.rank}",
            record.anchor_key, f"{record.anchor_identity} ({record.anchor_label})",
            record.partner_key, f"{record.partner_identity} ({record.partner_label})",
        ]
        if sources is not None:
            row += [sources[record.anchor_key], sources[record.partner_key]]
        table.add_row(*row)
    return table


@click.group("pairs")
def pairs() -> None:
    """Inspect mined pairs: hardest pairs, contact sheets, suspicious pairs."""


@pairs.command("top")
@_path_options
@_selection_options
@click.option("--paths", "show_paths", is_flag=True, help="Also show where each image lives (in the dataset).")
@click.option("--dataset", "dataset_path", default=None, help="Dataset location if it moved since embedding.")
def top(params_path, pairs_path, store_path, kind, count, identity, image, show_paths, dataset_path) -> None:
    """The hardest pairs: overall, of one identity (--identity) or of one image (--image)."""
    from rich.console import Console

    with _opened(params_path, pairs_path, store_path) as (table, store):
        records = _selected(table, store, kind, count, identity, image)
        sources = None
        if show_paths:
            from pipeline.stage_one.inspection import embedded_images

            images = embedded_images(store, dataset_path)
            sources = {key: images.source(key) for record in records for key in (record.anchor_key, record.partner_key)}
        scope = f" of image {image}" if image else f" of identity {identity}" if identity else ""
        Console().print(_pair_table(f"hardest {kind} pairs{scope} ({len(records)})", records, sources))


@pairs.command("sheet")
@_path_options
@_selection_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--columns", default=4, show_default=True, type=click.IntRange(min=1), help="Pairs per row.")
@click.option("--tile", default=112, show_default=True, type=click.IntRange(min=16), help="Size of each image in pixels.")
@click.option("--dataset", "dataset_path", default=None, help="Dataset location if it moved since embedding.")
def sheet(params_path, pairs_path, store_path, kind, count, identity, image, out_path, columns, tile, dataset_path) -> None:
    """A PNG contact sheet of the hardest pairs, images side by side with keys, identities and similarity."""
    from pathlib import Path

    from pipeline.stage_one.contact_sheet import draw_contact_sheet
    from pipeline.stage_one.inspection import embedded_images

    with _opened(params_path, pairs_path, store_path) as (table, store):
        records = _selected(table, store, kind, count, identity, image)
        picture = draw_contact_sheet(records, embedded_images(store, dataset_path).load, columns=columns, tile=tile)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_path, format="PNG")
    click.echo(f"{out_path}: {len(records)} {kind} pairs")


@pairs.command("suspicious")
@_path_options
@click.option("--threshold", type=float, default=None, help="Default: mine.suspicious_threshold.")
@click.option("--n", "count", default=50, show_default=True, type=click.IntRange(min=1), help="How many pairs to list.")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Write every suspicious pair here.")
def suspicious(params_path, pairs_path, store_path, threshold, count, csv_path) -> None:
    """Different identities, teacher similarity >= threshold: likely duplicates or label noise to clean."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.stage_one.inspection import suspicious_overview
    from pipeline.stage_one.pair_queries import describe_pairs

    console = Console()
    with _opened(params_path, pairs_path, store_path) as (table, store):
        if threshold is None:
            threshold = required(load_settings(params_path), params_path, "mine").suspicious_threshold
        overview = suspicious_overview(table, store, threshold, count, csv_path)
        records = describe_pairs(overview.most_similar, store)
        identity_names = store.identity_names
    console.print(f"{overview.total} suspicious pairs: different identities, teacher similarity >= {threshold}")
    if not overview.total:
        return
    console.print(_pair_table(f"most similar suspicious pairs ({len(records)} of {overview.total})", records))
    grouped = Table(title="identity pairs with suspicious image pairs (candidates for merging)")
    for column in ("identity", "identity", "image pairs", "max similarity"):
        grouped.add_column(column, overflow="fold")
    for pair in overview.identity_pairs:
        grouped.add_row(
            f"{identity_names[pair.low]} ({pair.low})", f"{identity_names[pair.high]} ({pair.high})",
            str(pair.image_pairs), f"{pair.max_similarity:.4f}",
        )
    console.print(grouped)
    if csv_path:
        console.print(f"all {overview.total} pairs written to {csv_path}")
