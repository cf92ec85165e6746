"""What a made-up person, and each image of them, looks like: traits sampled from seeded generators.

An identity is a fixed set of continuous facial traits sampled from a generator seeded by
(seed, identity index) alone, so a person never depends on how many others are drawn or on the
worker count. Each image shows that person under its own pose, expression, lighting, camera and
occlusion, sampled from (seed, identity index, image index).

Geometry is written in face coordinates: u to the right, v down, in units of the image width,
origin at the image centre of an unposed face (see `render`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

Colour = tuple[float, float, float]

# First words of the seed sequences, so trait and image generators never share a state.
TRAIT_STREAM = 0x7EA175
IMAGE_STREAM = 0x1AA6E5
# How far people differ from the average face, as a factor on the trait spreads in `sample_traits`:
# the difficulty knob. At 0.65 a 12M multiply-add CNN trained 8 epochs on 300 people x 20 images
# at 64 px verifies pairs of unseen people with 86% accuracy (88% at 1.0); trained on 1000 people
# it learns much faster (at 1.0: 90% after 3 epochs against 77%), which leaves a teacher room to lead.
TRAIT_SPREAD = 0.65

SKIN_TONES: tuple[Colour, ...] = ((0.97, 0.83, 0.72), (0.86, 0.66, 0.52), (0.66, 0.45, 0.32), (0.36, 0.23, 0.16))
HAIR_TONES: tuple[Colour, ...] = ((0.88, 0.74, 0.48), (0.55, 0.38, 0.22), (0.28, 0.18, 0.11), (0.07, 0.06, 0.05))
IRIS_TONES: tuple[Colour, ...] = (
    (0.22, 0.13, 0.07), (0.42, 0.27, 0.13), (0.45, 0.42, 0.22),
    (0.28, 0.48, 0.32), (0.30, 0.46, 0.68), (0.55, 0.60, 0.66),
)
GREY_HAIR: Colour = (0.78, 0.78, 0.76)
RED_HAIR: Colour = (0.62, 0.26, 0.10)
LIP_RED: Colour = (0.72, 0.30, 0.30)


@dataclass(frozen=True)
class Face:
    half_width: float
    half_height: float
    centre_v: float
    jaw_taper: float  # 0 = oval, larger = narrower chin
    ear_size: float
    skin: Colour


@dataclass(frozen=True)
class Eyes:
    spacing: float  # half the distance between eye centres
    centre_v: float
    half_width: float
    opening: float
    tilt: float  # outer corners up when positive
    iris_radius: float
    iris: Colour


@dataclass(frozen=True)
class Brows:
    gap: float  # brow centre above eye centre
    thickness: float
    half_length: float
    arch: float
    tilt: float
    colour: Colour


@dataclass(frozen=True)
class Nose:
    tip_v: float
    half_width: float
    shading: float


@dataclass(frozen=True)
class Mouth:
    centre_v: float
    half_width: float
    upper_lip: float
    lower_lip: float
    colour: Colour


@dataclass(frozen=True)
class Hair:
    hairline_v: float  # top of the forehead at the centre; above the head top means bald
    temple_dip: float
    part_tilt: float
    volume: float  # how far the hair stands off the skull
    length: float  # how far down the sides it falls
    colour: Colour


@dataclass(frozen=True)
class Beard:
    cheeks: float  # each an opacity in [0, 1]; 0 = shaved
    moustache: float
    goatee: float
    colour: Colour


@dataclass(frozen=True)
class Glasses:
    squareness: float  # 0 = oval lenses, 1 = rectangular
    size: float
    frame_width: float
    colour: Colour
    tint: float


@dataclass(frozen=True)
class Mole:
    u: float
    v: float
    radius: float
    darkness: float


@dataclass(frozen=True)
class Scar:
    u: float
    v: float
    angle: float
    half_length: float


@dataclass(frozen=True)
class IdentityTraits:
    """What stays the same in every image of one person."""

    face: Face
    eyes: Eyes
    brows: Brows
    nose: Nose
    mouth: Mouth
    hair: Hair
    beard: Beard
    glasses: Glasses | None
    moles: tuple[Mole, ...]
    scar: Scar | None


@dataclass(frozen=True)
class Occlusion:
    kind: str  # "rectangle", "hand" or "mask"
    centre: tuple[float, float]  # image coordinates in [0, 1]; a mask's is (0, its top edge below the nose tip)
    half_size: tuple[float, float]
    angle: float
    colour: Colour


@dataclass(frozen=True)
class ImageVariation:
    """What changes from one image of a person to the next."""

    roll: float  # radians
    yaw: float
    pitch: float
    scale: float
    shift: tuple[float, float]
    smile: float
    mouth_open: float
    brow_raise: float
    squint: float  # 1 = eyes closed
    gaze: tuple[float, float]
    light: tuple[float, float, float]  # unit direction towards the light, z towards the camera
    light_strength: float
    brightness: float
    contrast: float
    colour_gain: Colour
    grayscale: bool
    background: tuple[Colour, Colour]
    background_angle: float
    clothing: Colour
    hairline_shift: float
    hair_volume_scale: float
    hair_length_shift: float
    beard_growth: float
    glasses_on: bool
    blur: float  # Gaussian sigma in image widths
    noise: float
    noise_seed: int
    occlusion: Occlusion | None


def _clipped_normal(rng: np.random.Generator, mean: float, std: float, low: float, high: float,
                    spread: float = 1.0) -> float:
    return float(np.clip(rng.normal(mean, spread * std), low, high))


def _palette(stops: Sequence[Colour], position: float) -> Colour:
    """The colour at `position` in [0, 1] along piecewise-linear `stops`."""
    along = min(max(position, 0.0), 1.0) * (len(stops) - 1)
    index = min(int(along), len(stops) - 2)
    return _mix(stops[index], stops[index + 1], along - index)


def _mix(first: Colour, second: Colour, amount: float) -> Colour:
    return tuple(a + (b - a) * amount for a, b in zip(first, second))


def scaled(colour: Colour, factors: Sequence[float]) -> Colour:
    return tuple(min(max(c * f, 0.0), 1.0) for c, f in zip(colour, factors))


def sample_traits(seed: int, identity: int) -> IdentityTraits:
    """The traits of person `identity`; hidden sex, age and melanin make traits co-vary as in people."""
    rng = np.random.default_rng([TRAIT_STREAM, seed, identity])
    normal = partial(_clipped_normal, rng, spread=TRAIT_SPREAD)

    masculine = float(rng.random())
    age = float(rng.random())
    melanin = float(rng.beta(1.3, 1.5))
    is_male = masculine > 0.5

    undertone = float(rng.normal(0.0, 0.03))
    skin = scaled(_palette(SKIN_TONES, melanin), (1 + undertone, 1.0, 1 - undertone))
    face = Face(
        half_width=normal(0.36 + 0.025 * masculine, 0.018, 0.31, 0.43),
        half_height=normal(0.47, 0.025, 0.41, 0.54),
        centre_v=normal(0.02, 0.012, -0.02, 0.06),
        jaw_taper=normal(0.35 - 0.15 * masculine, 0.1, 0.05, 0.65),
        ear_size=normal(1.0, 0.1, 0.75, 1.3),
        skin=skin,
    )
    eyes = Eyes(
        spacing=normal(0.157, 0.007, 0.14, 0.175),
        centre_v=normal(-0.04, 0.008, -0.06, -0.02),
        half_width=normal(0.05, 0.005, 0.037, 0.063),
        opening=normal(0.021, 0.004, 0.012, 0.032),
        tilt=normal(0.0, 0.008, -0.02, 0.02),
        iris_radius=normal(0.02, 0.002, 0.015, 0.026),
        iris=_palette(IRIS_TONES, normal(0.15 + 0.8 * (1 - melanin) * rng.random(), 0.1, 0.0, 1.0)),
    )
    hair_colour = _palette(HAIR_TONES, normal(0.3 + 0.7 * melanin, 0.3, 0.0, 1.0))
    if rng.random() < 0.08 * (1 - melanin):
        hair_colour = _mix(hair_colour, RED_HAIR, float(rng.uniform(0.4, 0.9)))
    hair_colour = _mix(hair_colour, GREY_HAIR, normal(2.2 * age - 1.4, 0.15, 0.0, 0.9))
    recession = masculine * age * float(rng.random()) if is_male else 0.0
    hair = Hair(
        hairline_v=normal(-0.26 - 0.35 * recession, 0.05, -0.65, -0.12),
        temple_dip=normal(0.1, 0.05, 0.0, 0.25),
        part_tilt=normal(0.0, 0.12, -0.3, 0.3),
        volume=normal(0.015 + 0.05 * (1 - masculine), 0.02, 0.003, 0.1),
        length=normal(0.0 + 0.45 * (1 - masculine), 0.15, -0.25, 0.7),
        colour=hair_colour,
    )
    brow_darkening = normal(0.65, 0.15, 0.3, 1.0)
    brows = Brows(
        gap=normal(0.05, 0.008, 0.032, 0.07),
        thickness=normal(0.007 + 0.004 * masculine, 0.0025, 0.003, 0.016),
        half_length=normal(0.052, 0.007, 0.035, 0.07),
        arch=normal(0.009, 0.006, -0.005, 0.025),
        tilt=normal(0.0, 0.01, -0.025, 0.025),
        colour=_mix(hair_colour, (0.05, 0.04, 0.03), brow_darkening),
    )
    nose = Nose(
        tip_v=normal(0.135, 0.012, 0.1, 0.17),
        half_width=normal(0.038 + 0.006 * masculine + 0.008 * melanin, 0.006, 0.025, 0.06),
        shading=normal(1.0, 0.25, 0.4, 1.6),
    )
    lip_darkening = normal(0.85, 0.05, 0.7, 1.0)
    mouth = Mouth(
        centre_v=normal(0.315, 0.012, 0.28, 0.35),
        half_width=normal(0.1, 0.01, 0.075, 0.13),
        upper_lip=normal(0.011 - 0.002 * masculine, 0.003, 0.004, 0.02),
        lower_lip=normal(0.016 - 0.002 * masculine, 0.004, 0.007, 0.028),
        colour=_mix(scaled(skin, (lip_darkening,) * 3), LIP_RED, normal(0.35 - 0.2 * masculine, 0.12, 0.0, 0.8)),
    )
    beard_colour = _mix(hair_colour, (0.1, 0.08, 0.06), 0.2)

    def beard_part(probability: float) -> float:
        return float(rng.uniform(0.25, 0.95)) if is_male and rng.random() < probability else 0.0

    beard = Beard(cheeks=beard_part(0.3), moustache=beard_part(0.4), goatee=beard_part(0.35), colour=beard_colour)
    glasses = None
    if rng.random() < 0.15 + 0.25 * age:
        dark_frame = rng.random() < 0.6
        glasses = Glasses(
            squareness=float(rng.random()),
            size=normal(1.0, 0.08, 0.85, 1.2),
            frame_width=float(rng.uniform(0.003, 0.01)),
            colour=tuple(float(c) for c in (rng.uniform(0.02, 0.2, 3) if dark_frame else rng.uniform(0.2, 0.9, 3))),
            tint=float(rng.uniform(0.0, 0.35)) if rng.random() < 0.2 else 0.03,
        )
    moles = tuple(
        Mole(
            u=float(rng.uniform(-0.27, 0.27)),
            v=float(rng.uniform(-0.25, 0.4)),
            radius=normal(0.007, 0.002, 0.004, 0.013),
            darkness=float(rng.uniform(0.3, 0.65)),
        )
        for _ in range(min(int(rng.poisson(0.8)), 4))
    )
    scar = None
    if rng.random() < 0.1:
        scar = Scar(
            u=float(rng.uniform(-0.25, 0.25)),
            v=float(rng.uniform(-0.25, 0.35)),
            angle=float(rng.uniform(0, math.pi)),
            half_length=float(rng.uniform(0.015, 0.045)),
        )
    return IdentityTraits(face, eyes, brows, nose, mouth, hair, beard, glasses, moles, scar)


def _sample_occlusion(rng: np.random.Generator) -> Occlusion:
    kind = str(rng.choice(["rectangle", "hand", "mask"], p=[0.35, 0.35, 0.3]))
    if kind == "rectangle":
        return Occlusion(
            kind,
            centre=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))),
            half_size=(float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.06, 0.2))),
            angle=float(rng.uniform(-0.6, 0.6)),
            colour=tuple(float(c) for c in rng.random(3)),
        )
    if kind == "hand":
        size = float(rng.uniform(0.85, 1.2))
        return Occlusion(
            kind,
            centre=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.5, 0.95))),
            half_size=(0.12 * size, 0.1 * size),
            angle=float(rng.uniform(-1.3, 1.3)),
            colour=_palette(SKIN_TONES, float(rng.random())),
        )
    colour = [(0.62, 0.78, 0.9), (0.93, 0.93, 0.93), (0.1, 0.1, 0.12)][int(rng.integers(3))]
    return Occlusion(
        kind,
        centre=(0.0, float(rng.uniform(-0.01, 0.03))),
        half_size=(0.0, 0.0),
        angle=0.0,
        colour=colour,
    )


def _colour_gain(rng: np.random.Generator) -> Colour:
    """Per-channel gains: a white-balance shift along blue-orange plus independent channel errors."""
    temperature = rng.normal(0.0, 0.08)
    channel = rng.normal(1.0, 0.07, 3)
    return tuple(float(np.clip(g * t, 0.7, 1.3)) for g, t in zip(channel, (1 + temperature, 1.0, 1 - temperature)))


def sample_variation(seed: int, identity: int, image: int) -> ImageVariation:
    """Pose, expression, lighting, camera and occlusion of image `image` of person `identity`."""
    rng = np.random.default_rng([IMAGE_STREAM, seed, identity, image])
    normal = partial(_clipped_normal, rng)

    elevation = float(rng.uniform(0.3, 0.95))
    azimuth = float(rng.uniform(0, 2 * math.pi))
    sideways = math.sqrt(1 - elevation * elevation)
    squint = 1.0 if rng.random() < 0.04 else normal(-0.1, 0.3, 0.0, 0.8)
    return ImageVariation(
        roll=math.radians(normal(0.0, 7.0, -20.0, 20.0)),
        yaw=normal(0.0, 0.4, -0.9, 0.9),
        pitch=normal(0.0, 0.4, -0.9, 0.9),
        scale=normal(1.0, 0.06, 0.85, 1.18),
        shift=(normal(0.0, 0.03, -0.08, 0.08), normal(0.0, 0.03, -0.08, 0.08)),
        smile=normal(0.15, 0.45, 0.0, 1.0),
        mouth_open=normal(-0.2, 0.4, 0.0, 1.0),
        brow_raise=normal(0.0, 0.4, -1.0, 1.0),
        squint=squint,
        gaze=(normal(0.0, 0.3, -0.6, 0.6), normal(0.0, 0.2, -0.4, 0.4)),
        light=(sideways * math.cos(azimuth), sideways * math.sin(azimuth), elevation),
        light_strength=float(rng.uniform(0.2, 0.85)),
        brightness=normal(1.0, 0.18, 0.55, 1.45),
        contrast=normal(1.0, 0.15, 0.6, 1.4),
        colour_gain=_colour_gain(rng),
        grayscale=bool(rng.random() < 0.12),
        background=(
            tuple(float(c) for c in rng.random(3) * 0.9 + 0.05),
            tuple(float(c) for c in rng.random(3) * 0.9 + 0.05),
        ),
        background_angle=float(rng.uniform(0, 2 * math.pi)),
        clothing=tuple(float(c) for c in rng.random(3) * 0.8 + 0.05),
        hairline_shift=normal(0.0, 0.025, -0.06, 0.06),
        hair_volume_scale=normal(1.0, 0.3, 0.4, 1.8),
        hair_length_shift=normal(0.0, 0.08, -0.2, 0.2),
        beard_growth=0.0 if rng.random() < 0.15 else normal(1.0, 0.25, 0.4, 1.4),
        glasses_on=bool(rng.random() < 0.7),
        blur=float(rng.random()) ** 2 * 1.4 / 64,
        noise=float(rng.uniform(0.0, 0.05)),
        noise_seed=int(rng.integers(2**63)),
        occlusion=_sample_occlusion(rng) if rng.random() < 0.35 else None,
    )

