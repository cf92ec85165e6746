"""Shape arithmetic shared by the backbones: width scaling and the final feature-map size."""
from __future__ import annotations

import math

from pipeline.errors import FacekdError

MIN_INPUT_SIZE = 16  # four stride-2 stages leave a 1x1 map at 16 px
STRIDE_2_STAGES = 4


def scaled_channels(channels: int, width: float) -> int:
    """`channels * width`, rounded, at least 1."""
    if width <= 0:
        raise FacekdError(f"backbone width must be > 0, got {width}")
    return max(1, round(channels * width))


def check_input_size(input_size: int) -> None:
    if input_size < MIN_INPUT_SIZE:
        raise FacekdError(f"backbone input_size must be >= {MIN_INPUT_SIZE} pixels, got {input_size}")


def final_feature_size(input_size: int) -> int:
    """Side of the map after the four stride-2, padding-1 3x3 convolutions: each gives ceil(n / 2)."""
    return math.ceil(input_size / 2**STRIDE_2_STAGES)
