"""Writing outputs so that a crash never leaves a file that looks complete."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def partial_name(path: Path) -> Path:
    """The name an output is written under until it is complete (git-ignored: `*.partial`)."""
    return path.with_name(path.name + ".partial")


@contextmanager
def written_atomically(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    with written_atomically(path) as temporary:
        temporary.write_text(text)
