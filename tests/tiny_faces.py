"""A tiny face network and a tiny image-folder dataset: real inputs for tests, built in milliseconds."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

TINY_SIZE = 32
TINY_DIM = 16


class TinyFaceNet(nn.Module):
    """A few convolutions: enough to be a real network, small enough for fast tests."""

    def __init__(self, embedding_dim: int = TINY_DIM) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def export_tiny_onnx(path: Path, model: nn.Module, size: int = TINY_SIZE, nhwc: bool = False) -> Path:
    """Export with the default (dynamo) exporter, dynamic batch, one self-contained file."""
    example = torch.randn(2, size, size, 3) if nhwc else torch.randn(2, 3, size, size)
    torch.onnx.export(
        model.eval(), (example,), str(path), input_names=["input"], output_names=["embedding"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False,
    )
    return path


def write_face_folder(root: Path, identities: int, images: int, size: int = TINY_SIZE, seed: int = 0) -> Path:
    """Identity = a base colour pattern; images = that pattern plus noise, saved as JPEG."""
    rng = np.random.default_rng(seed)
    for identity in range(identities):
        base = rng.integers(0, 256, (size // 4, size // 4, 3))
        folder = root / f"person{identity:02d}"
        folder.mkdir(parents=True)
        for index in range(images):
            pixels = np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, 20, (size, size, 3))
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
            (folder / f"{index:03d}.jpg").write_bytes(buffer.getvalue())
    return root
