"""Settings of the default data: the synthetic faces (`synth`) and their verification pairs
(`verification`). Unused with real data; absent sections are not required."""
from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.config import MOST_PROCESSES, ConfigModel

MIN_SIZE = 16  # pixels: the smallest synthetic image side accepted
MAX_IDENTITIES_PER_SPLIT = 1_000_000  # each split's identities are numbered within a block of this size


class SynthConfig(ConfigModel):
    """`facekd synth`: made-up people, three disjoint splits."""

    seed: int = Field(0, ge=0, description="Seed of every drawn trait and image variation.")
    size: int = Field(
        64, ge=MIN_SIZE, description="Image side in pixels (112 is the field's size; 64 keeps the default pipeline in budget).",
    )
    teacher_identities: int = Field(1000, ge=1, le=MAX_IDENTITIES_PER_SPLIT, description="Identities only the teacher sees.")
    teacher_images: int = Field(20, ge=1, description="Images per teacher identity.")
    student_identities: int = Field(
        300, ge=1, le=MAX_IDENTITIES_PER_SPLIT, description="Identities of the student set, disjoint from the teacher's.",
    )
    student_images: int = Field(20, ge=1, description="Images per student identity.")
    heldout_identities: int = Field(
        200, ge=1, le=MAX_IDENTITIES_PER_SPLIT, description="Identities of the verification pairs, seen by nobody in training.",
    )
    heldout_images: int = Field(10, ge=1, description="Images per held-out identity.")
    workers: int = Field(2, ge=1, le=MOST_PROCESSES, description="Processes that draw and encode images.")


class VerificationConfig(ConfigModel):
    """Pairs over the held-out identities in insightface's .bin format (`facekd make-bin`, via synthetic/dvc.yaml)."""

    dataset: str = Field("data/synth/heldout", description="Image folder the pairs are drawn from.")
    out: str = Field("data/eval/heldout.bin", description="The .bin written.")
    num_pairs: int = Field(6000, gt=0, description="Pairs drawn, half same identity, half not (even).")
    seed: int = Field(0, ge=0, description="Seed of the pair drawing.")

    @field_validator("num_pairs")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("expected an even number: half the pairs are same-identity, half not")
        return value
