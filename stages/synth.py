"""`facekd synth`: generate the default synthetic face-identity data (teacher, student, held-out)."""
from __future__ import annotations

import click

from pipeline.data.synth import MIN_SIZE, generate
from pipeline.errors import FacekdError
from stages.params import load_section


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Parameters file; reads its `synth` section.")
@click.option("--out", "out_root", default="data/synth", show_default=True,
              type=click.Path(file_okay=False), help="Folder that receives teacher/, student/ and heldout/.")
def synth(params_path: str, out_root: str) -> None:
    """Generate the synthetic face-identity data set as image folders."""
    section = load_section(params_path, "synth")
    seed = section.get("seed", int)
    if seed < 0:
        raise FacekdError(f"{section.where('seed')} is {seed!r}; expected a non-negative int")
    size = section.get("size", int)
    if size < MIN_SIZE:
        raise FacekdError(f"{section.where('size')} is {size!r}; expected at least {MIN_SIZE} (pixels)")
    counts = {key: section.positive(key) for key in (
        "teacher_identities", "teacher_images", "student_identities", "student_images",
        "heldout_identities", "heldout_images",
    )}
    written = generate(out_root, size=size, seed=seed, workers=section.positive("workers"), **counts)
    summary = ", ".join(f"{name} {counts[f'{name}_identities']} identities / {images} images"
                        for name, images in written.items())
    click.echo(f"synth: wrote {summary} at {size}x{size} px to {out_root}")
