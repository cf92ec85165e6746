"""Training losses: margin heads, ILED, RPSD and the baseline distillation losses."""
from pipeline.stage_two.losses.baselines import AdaArcDistillLoss, FCLoss, RawL2Loss, RKDLoss, SPLoss
from pipeline.stage_two.losses.iled import ILEDLoss, iled_rho
from pipeline.stage_two.losses.margin import (
    CombinedMarginHead, PartialMarginHead, SampledCentresHead, combined_margin_logits, margin_head, margin_values,
)
from pipeline.stage_two.losses.projector import embedding_projector
from pipeline.stage_two.losses.rpsd import RPSDLoss, mine_rpsd_pairs
from pipeline.stage_two.losses.sharded_margin import ShardedMarginHead

__all__ = [
    "AdaArcDistillLoss",
    "CombinedMarginHead",
    "FCLoss",
    "ILEDLoss",
    "PartialMarginHead",
    "RKDLoss",
    "RPSDLoss",
    "RawL2Loss",
    "SPLoss",
    "SampledCentresHead",
    "ShardedMarginHead",
    "combined_margin_logits",
    "embedding_projector",
    "iled_rho",
    "margin_head",
    "margin_values",
    "mine_rpsd_pairs",
]
