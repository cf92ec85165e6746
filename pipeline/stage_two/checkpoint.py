"""Training checkpoints that hold data, not code, and prove they are intact.

A checkpoint is a torch file holding the torch-saved training state as bytes plus the sha256 of
those bytes. Both levels are read with `weights_only=True`, so a file whose pickle would run code
(a `__reduce__` calling `os.system`) is refused instead of executed; the digest catches bytes
changed in the tensor data, which torch itself would load silently. The digest is a check of
integrity, not a signature: safety against hostile files comes from `weights_only`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import FacekdError
from pipeline.files import written_atomically

log = logging.getLogger(__name__)

FORMAT = "facekd-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `state` (tensors, dicts, lists, numbers, strings only) with its digest, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state_bytes = buffer.getvalue()
    wrapped = {
        "format": FORMAT,
        "sha256": hashlib.sha256(state_bytes).hexdigest(),
        "state": torch.frombuffer(bytearray(state_bytes), dtype=torch.uint8),
    }
    with written_atomically(path) as temporary:
        torch.save(wrapped, temporary)


def read_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved by `save_checkpoint`; FacekdError when the file is foreign, damaged or holds code."""
    path = Path(path)
    try:
        wrapped = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated zip, not a torch file, ...
        raise FacekdError(f"{path}: not a readable facekd checkpoint ({type(error).__name__}: {error})") from None
    if (
        not isinstance(wrapped, dict) or wrapped.get("format") != FORMAT
        or not isinstance(wrapped.get("sha256"), str) or not isinstance(wrapped.get("state"), torch.Tensor)
    ):
        raise FacekdError(f"{path}: not a facekd checkpoint (expected format {FORMAT!r})")
    state_bytes = wrapped["state"].numpy().tobytes()
    digest = hashlib.sha256(state_bytes).hexdigest()
    if digest != wrapped["sha256"]:
        raise FacekdError(f"{path}: the training state's sha256 is {digest}, not the {wrapped['sha256']} it was saved with")
    try:
        return torch.load(io.BytesIO(state_bytes), map_location=device, weights_only=True)
    except Exception as error:  # a well-formed wrapper around a hostile or foreign state
        raise FacekdError(f"{path}: the training state cannot be read as data ({type(error).__name__}: {error})") from None


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None: when there is none, or (with a warning) when it cannot be trusted."""
    if not path.exists():
        return None
    try:
        return read_checkpoint(path, device)
    except FacekdError as error:  # training restarts rather than failing: the file is rewritten at the next epoch
        log.warning("%s; training from scratch", error)
        return None
