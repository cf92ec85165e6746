"""`facekd synth`: generate the default synthetic face-identity data (teacher, student, held-out)."""
from __future__ import annotations

import click

from stages.params import load_settings, required


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Parameters file; reads its `synth` section.")
@click.option("--out", "out_root", default="data/synth", show_default=True,
              type=click.Path(file_okay=False), help="Folder that receives teacher/, student/ and heldout/.")
def synth(params_path: str, out_root: str) -> None:
    """Generate the synthetic face-identity data set as image folders."""
    from pipeline.data.synth import generate

    config = required(load_settings(params_path), params_path, "synth")
    written = generate(out_root, **config.model_dump())
    summary = ", ".join(f"{name} {getattr(config, f'{name}_identities')} identities / {images} images"
                        for name, images in written.items())
    click.echo(f"synth: wrote {summary} at {config.size}x{config.size} px to {out_root}")
