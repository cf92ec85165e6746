"""The `facekd` command line: one command per DVC stage plus inspection tools.

Commands are imported only when called, so `facekd --help` does not pay for torch or faiss.
"""
from __future__ import annotations

import importlib
import sys

import click

from pipeline.errors import FacekdError

# command name -> "module:attribute" of its click command
COMMANDS = {
    "synth": "stages.synth:synth",
    "teacher": "stages.teacher:teacher",
    "embed": "stages.embed:embed",
    "train": "stages.train:train",
    "store": "stages.store:store",
    "index": "stages.index:index",
    "mine": "stages.mine:mine",
    "pairs": "stages.pairs:pairs",
    "evaluate": "stages.evaluate:evaluate",
    "make-bin": "stages.evaluate:make_bin",
    "results": "stages.results:results",
    "repro": "stages.repro:repro",
    "ablation": "stages.ablation:ablation",
}


class FacekdGroup(click.Group):
    """Lazy sub-commands; a FacekdError becomes a one-line message and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FacekdError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=FacekdGroup)
@click.version_option(package_name="facekd")
def cli() -> None:
    """facekd: distil a face-recognition teacher into a small student, offline."""


def main() -> None:
    cli(prog_name="facekd")


if __name__ == "__main__":
    sys.exit(main())
