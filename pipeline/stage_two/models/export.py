"""Export a backbone to ONNX, and prove the file computes what the PyTorch model computes.

The exported file is what the teacher stage (ONNX Runtime) loads, so it is written under a
temporary name, checked (finite weights, finite outputs equal to eager PyTorch's at a batch size
other than the traced one) and only then renamed: a model that fails the check never appears.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnxruntime
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.errors import FacekdError
from pipeline.files import written_atomically
from pipeline.stage_two.models import eval_mode
from pipeline.onnx_model import load_onnx

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
TRACE_BATCH_SIZE = 2  # not 1: a batch of 1 invites the exporter to specialise the batch dimension


EXPORTER_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the given loggers to ERROR for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: int, opset: int = 18) -> None:
    """Write `model` (in eval mode) to one self-contained ONNX file with a dynamic batch dimension.

    The file appears under `path` only once complete and checked by `check_onnx_matches`: it is
    written to a sibling temporary name and renamed, so neither a crash nor a diverged model
    (non-finite weights or outputs) leaves a model at `path` that looks finished.
    """
    device = next(model.parameters()).device
    example = torch.zeros(TRACE_BATCH_SIZE, 3, input_size, input_size, device=device)
    with written_atomically(path) as partial_path:
        # The exporter warns about torchvision ops and its own deprecations; none concern our models.
        with eval_mode(model), torch.no_grad(), warnings.catch_warnings(), _quiet(EXPORTER_LOGGERS):
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (example,),
                partial_path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
        check_onnx_matches(model, partial_path, input_size)
    logger.info("exported %s to %s", type(model).__name__, path)


def check_onnx_matches(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    batch_size: int = TRACE_BATCH_SIZE + 1,
) -> None:
    """Raise FacekdError unless `path` has finite weights and ONNX Runtime on it reproduces `model`
    (eval mode) on a random batch with finite outputs.

    Passes when max |onnx - torch| <= atol + rtol * max |torch|: the tolerance follows the output's
    scale, since un-normalised embeddings can be far from 1 in magnitude. The default batch size
    differs from the traced one, so a batch dimension frozen at export time is caught.
    """
    images = torch.randn(batch_size, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        expected = model(images.to(device)).cpu().numpy()
    onnx_model = load_onnx(path)
    for initializer in onnx_model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype.kind == "f" and not np.isfinite(weights).all():
            raise FacekdError(f"{path}: weight '{initializer.name}' has non-finite values; expected a finite model")
    try:
        session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    except Exception as error:  # onnxruntime's errors derive from Exception only
        raise FacekdError(f"{path}: ONNX Runtime failed on a batch of shape {tuple(images.shape)}: {error}") from error
    if not np.isfinite(actual).all():
        raise FacekdError(
            f"{path}: ONNX output has {int((~np.isfinite(actual)).sum())} non-finite values on a random batch; "
            "expected finite embeddings"
        )
    if actual.shape != expected.shape:
        raise FacekdError(f"{path}: ONNX output has shape {actual.shape}, PyTorch gives {expected.shape}")
    max_difference = float(np.abs(actual - expected).max())
    tolerance = atol + rtol * float(np.abs(expected).max())
    if not max_difference <= tolerance:  # also fails on NaN
        raise FacekdError(
            f"{path}: ONNX output differs from PyTorch by up to {max_difference:.3g} "
            f"(allowed {tolerance:.3g}) on a batch of {batch_size}"
        )
