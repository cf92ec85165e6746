"""The `facekd` command line: one command per DVC stage plus inspection tools.

Commands are imported only when called, so `facekd --help` does not pay for torch or faiss.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from pipeline.errors import FacekdError
from pipeline.files import is_storage_error
from pipeline.huge_pages import restart_with_huge_pages

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
    "make-bin": "stages.make_bin:make_bin",
    "quantize": "stages.quantize:quantize",
    "latency": "stages.latency:latency",
    "results": "stages.results:results",
    "repro": "stages.repro:repro",
    "ablation": "stages.ablation:ablation",
}
# Commands whose memory is mostly a large index read at random: run with huge pages (pipeline/huge_pages.py)
HUGE_PAGE_COMMANDS = {"index"}


class FacekdGroup(click.Group):
    """Lazy sub-commands; a FacekdError or a storage error becomes a one-line message and exit status 1."""

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
        except OSError as error:  # a write that no stage turned into a FacekdError naming its output
            if not is_storage_error(error):
                raise
            raise click.ClickException(f"{error.filename or 'output'}: cannot write ({error.strerror})") from None


@click.group(cls=FacekdGroup)
@click.version_option(package_name="facekd")
def cli() -> None:
    """facekd: distil a face-recognition teacher into a small student, offline."""


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in HUGE_PAGE_COMMANDS:
        restart_with_huge_pages()
    # Past a file-size limit (ulimit -f), fail the write with EFBIG, which names the file, instead of
    # being killed by SIGXFSZ with a half-written output.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        cli(prog_name="facekd")
    except SystemExit as stop:
        if stop.code and _hdf5_files_open():
            # After a failed write HDF5 retries flushing the file while Python frees it at exit, which
            # can crash the process; the error is reported and the partial output settled, so skip that.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        raise


def _hdf5_files_open() -> bool:
    if "h5py" not in sys.modules:
        return False
    import h5py

    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE) > 0


if __name__ == "__main__":
    sys.exit(main())
