"""Synthetic face-identity data: aligned-face-like images of made-up people.

No real face data set with identity labels can be installed, so the default pipeline runs on
people drawn here. An identity is a fixed set of continuous facial traits sampled from a generator
seeded by (seed, identity index) alone, so a person never depends on how many others are drawn or
on the worker count. Each image shows that person under its own pose, expression, lighting,
camera and occlusion, sampled from (seed, identity index, image index). Faces are laid out like
insightface's 112x112 aligned crops (eyes near x = 0.34 and 0.66, y = 0.46; mouth near y = 0.82),
at any resolution. Rendering uses numpy only (Pillow encodes the JPEG); per pixel it uses only
arithmetic and square roots, which are exactly rounded whatever SIMD code numpy picks, so the same
seed and parameters give byte-identical files.

Geometry is written in face coordinates: u to the right, v down, in units of the image width,
origin at the image centre of an unposed face. Pose maps them to image coordinates.
"""
from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.files import written_atomically
from pipeline.errors import FacekdError

Colour = tuple[float, float, float]

# First words of the seed sequences, so trait and image generators never share a state.
TRAIT_STREAM = 0x7EA175
IMAGE_STREAM = 0x1AA6E5

# Each split starts at its own identity index, so one split's size never changes another's people.
SPLIT_FIRST_IDENTITY = {"teacher": 0, "student": 1_000_000, "heldout": 2_000_000}
MAX_IDENTITIES_PER_SPLIT = 1_000_000
MIN_SIZE = 16
# How far people differ from the average face, as a factor on the trait spreads in `sample_traits`:
# the difficulty knob. At 0.65 a 12M multiply-add CNN trained 8 epochs on 300 people x 20 images
# at 64 px verifies pairs of unseen people with 86% accuracy (88% at 1.0); trained on 1000 people
# it learns much faster (at 1.0: 90% after 3 epochs against 77%), which leaves a teacher room to lead.
TRAIT_SPREAD = 0.65
JPEG_QUALITY = 95

SKIN_TONES: tuple[Colour, ...] = ((0.97, 0.83, 0.72), (0.86, 0.66, 0.52), (0.66, 0.45, 0.32), (0.36, 0.23, 0.16))
HAIR_TONES: tuple[Colour, ...] = ((0.88, 0.74, 0.48), (0.55, 0.38, 0.22), (0.28, 0.18, 0.11), (0.07, 0.06, 0.05))
IRIS_TONES: tuple[Colour, ...] = (
    (0.22, 0.13, 0.07), (0.42, 0.27, 0.13), (0.45, 0.42, 0.22),
    (0.28, 0.48, 0.32), (0.30, 0.46, 0.68), (0.55, 0.60, 0.66),
)
GREY_HAIR: Colour = (0.78, 0.78, 0.76)
RED_HAIR: Colour = (0.62, 0.26, 0.10)
LIP_RED: Colour = (0.72, 0.30, 0.30)
SCLERA: Colour = (0.90, 0.88, 0.85)
MOUTH_INSIDE: Colour = (0.30, 0.08, 0.08)
TEETH: Colour = (0.92, 0.90, 0.82)

# How far a feature moves sideways per unit of yaw (1 is about 45 degrees); eyes stay put, as alignment keeps them.
NOSE_DEPTH, MOUTH_DEPTH, OUTLINE_DEPTH, EAR_DEPTH = 0.06, 0.03, -0.05, -0.07


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
    scaled = min(max(position, 0.0), 1.0) * (len(stops) - 1)
    index = min(int(scaled), len(stops) - 2)
    return _mix(stops[index], stops[index + 1], scaled - index)


def _mix(first: Colour, second: Colour, amount: float) -> Colour:
    return tuple(a + (b - a) * amount for a, b in zip(first, second))


def _scaled(colour: Colour, factors: Sequence[float]) -> Colour:
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
    skin = _scaled(_palette(SKIN_TONES, melanin), (1 + undertone, 1.0, 1 - undertone))
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
        colour=_mix(_scaled(skin, (lip_darkening,) * 3), LIP_RED, normal(0.35 - 0.2 * masculine, 0.12, 0.0, 0.8)),
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


class _Canvas:
    """An image being drawn, or a window of one: 3 x H x W colours plus, per pixel, image
    coordinates (x, y) and posed face coordinates (u, v). Small features draw in a window around
    themselves, which is most of the rendering speed."""

    def __init__(self, size: int, variation: ImageVariation) -> None:
        self.size = size
        self.variation = variation
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = np.meshgrid(centres, centres)
        self.cos, self.sin = math.cos(variation.roll), math.sin(variation.roll)
        dx = (self.x - (0.5 + variation.shift[0])) / variation.scale
        dy = (self.y - (0.5 + variation.shift[1])) / variation.scale
        self.u = self.cos * dx + self.sin * dy
        self.v = self.cos * dy - self.sin * dx
        self.pixel = 1.0 / (size * variation.scale)  # one pixel in face units, the anti-aliasing width
        self.colours = np.zeros((3, size, size), dtype=np.float32)
        self.face = np.zeros((size, size), dtype=np.float32)  # face-skin coverage, once drawn

    def around(self, centre_u: float, centre_v: float, radius: float) -> _Canvas:
        """The window that holds the disc of `radius` (face units) around a face point; views, not copies."""
        variation = self.variation
        image_x = 0.5 + variation.shift[0] + variation.scale * (self.cos * centre_u - self.sin * centre_v)
        image_y = 0.5 + variation.shift[1] + variation.scale * (self.sin * centre_u + self.cos * centre_v)
        reach = radius * variation.scale * self.size + 2.0

        def pixels(centre: float) -> slice:
            middle = centre * self.size - 0.5
            return slice(min(max(math.floor(middle - reach), 0), self.size),
                         min(max(math.ceil(middle + reach) + 1, 0), self.size))

        rows, columns = pixels(image_y), pixels(image_x)
        window = object.__new__(_Canvas)
        window.__dict__.update(self.__dict__)
        for name in ("x", "y", "u", "v", "face"):
            setattr(window, name, getattr(self, name)[rows, columns])
        window.colours = self.colours[:, rows, columns]
        return window

    def cover(self, signed_distance: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage from an approximate signed distance in face units (negative inside)."""
        coverage = 0.5 - signed_distance * (1.0 / self.pixel)
        return np.minimum(np.maximum(coverage, 0.0, out=coverage), 1.0, out=coverage)

    def ellipse(self, centre_u: float, centre_v: float, half_u: float, half_v: float) -> np.ndarray:
        return self.cover(_ellipse_distance(self.u - centre_u, self.v - centre_v, half_u, half_v))

    def band(self, curve: np.ndarray, half_thickness: np.ndarray | float, outside: np.ndarray) -> np.ndarray:
        """Coverage of a stroke of `half_thickness` around v = curve(u), cut where `outside` > 0."""
        return self.cover(np.maximum(np.abs(self.v - curve) - half_thickness, outside))

    def paint(self, alpha: np.ndarray, colour: Colour) -> None:
        """Blend `colour` over the canvas; channels first keeps numpy's inner loops long."""
        self.colours += alpha * (np.asarray(colour, dtype=np.float32)[:, None, None] - self.colours)

    def darken(self, alpha: np.ndarray, amount: float) -> None:
        self.colours *= 1.0 - amount * alpha


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return (np.sqrt(np.square(du * (1.0 / half_u)) + np.square(dv * (1.0 / half_v))) - 1.0) * min(half_u, half_v)


def _draw_background(canvas: _Canvas, variation: ImageVariation) -> None:
    first, second = (np.asarray(c, dtype=np.float32)[:, None, None] for c in variation.background)
    angle = variation.background_angle
    along = (canvas.x - 0.5) * math.cos(angle) + (canvas.y - 0.5) * math.sin(angle)
    canvas.colours[...] = first + np.clip(along + 0.5, 0.0, 1.0) * (second - first)


def _draw_body(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    face = traits.face
    neck_u = np.abs(canvas.u - variation.yaw * OUTLINE_DEPTH)
    neck = np.maximum(neck_u - 0.55 * face.half_width, face.centre_v - canvas.v)
    canvas.paint(canvas.cover(neck), _scaled(face.skin, (0.82, 0.82, 0.82)))
    shoulders = 0.62 - 0.9 * np.maximum(np.abs(canvas.u) - 0.22, 0.0) - canvas.v
    canvas.paint(canvas.cover(shoulders), variation.clothing)


def _hair_outline(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to the hair's outer outline, and u relative to the head's centre line."""
    face, hair = traits.face, traits.hair
    du = canvas.u - variation.yaw * OUTLINE_DEPTH
    dv = canvas.v - face.centre_v
    volume = hair.volume * variation.hair_volume_scale
    spread = volume + 0.25 * np.maximum(dv - 0.05, 0.0) * (hair.length > 0.2)  # long hair widens below the ears
    radius = np.sqrt(np.square(du / (face.half_width + 0.02 + spread)) + np.square(dv / (face.half_height + volume)))
    return (radius - 1.0) * face.half_width, du


def _draw_hair_back(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    """Hair seen around the head, behind the face, down to the hair's length."""
    outer, _ = _hair_outline(canvas, traits, variation)
    below_length = canvas.v - (traits.face.centre_v + traits.hair.length + variation.hair_length_shift)
    canvas.paint(canvas.cover(np.maximum(outer, below_length)), traits.hair.colour)


def _draw_ears(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    face = traits.face
    centre_v = traits.eyes.centre_v + 0.065 + 0.02 * variation.pitch
    half_u, half_v = 0.032 * face.ear_size, 0.07 * face.ear_size
    skin = _scaled(face.skin, (0.92, 0.9, 0.9))
    for side in (-1.0, 1.0):
        tuck = 0.04 * max(side * variation.yaw, 0.0)  # the ear the head turns away from hides behind it
        centre_u = side * (face.half_width * 0.97 - tuck) + variation.yaw * EAR_DEPTH
        ear = canvas.around(centre_u, centre_v, half_v)
        ear.paint(ear.ellipse(centre_u, centre_v, half_u, half_v), skin)
        ear.darken(ear.ellipse(centre_u, centre_v, 0.45 * half_u, 0.65 * half_v), 0.25)


def _face_distance(canvas: _Canvas, face: Face, variation: ImageVariation) -> np.ndarray:
    """Signed distance to the face outline: an ellipse whose lower half narrows towards the chin."""
    du = canvas.u - variation.yaw * OUTLINE_DEPTH
    dv = canvas.v - face.centre_v
    below_centre = np.maximum(dv, 0.0) / face.half_height
    half_width = face.half_width * (1.0 - face.jaw_taper * np.square(below_centre))
    return (np.sqrt(np.square(du / half_width) + np.square(dv / face.half_height)) - 1.0) * face.half_width


def _draw_marks(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    skin = traits.face.skin
    offset_u = 0.5 * variation.yaw * NOSE_DEPTH
    for mole in traits.moles:
        spot = canvas.around(mole.u + offset_u, mole.v, mole.radius)
        alpha = spot.face * spot.ellipse(mole.u + offset_u, mole.v, mole.radius, mole.radius)
        spot.paint(alpha * mole.darkness, _scaled(skin, (0.45, 0.35, 0.3)))
    if traits.scar is not None:
        scar = traits.scar
        line = canvas.around(scar.u + offset_u, scar.v, scar.half_length)
        cos, sin = math.cos(scar.angle), math.sin(scar.angle)
        du, dv = line.u - (scar.u + offset_u), line.v - scar.v
        along, across = cos * du + sin * dv, cos * dv - sin * du
        distance = np.maximum(np.abs(across) - 0.003, np.abs(along) - scar.half_length)
        line.paint(line.face * line.cover(distance) * 0.7, _scaled(skin, (1.12, 0.92, 0.92)))


def _draw_beard(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    beard, mouth = traits.beard, traits.mouth
    growth = variation.beard_growth
    mouth_u = variation.yaw * MOUTH_DEPTH
    mouth_v = mouth.centre_v + 0.015 * variation.pitch
    if beard.cheeks > 0:  # from the cheekbones down, following the jaw
        top = traits.eyes.centre_v + 0.17 + 0.04 * np.square((canvas.u - mouth_u) / traits.face.half_width)
        canvas.paint(canvas.face * canvas.cover(top - canvas.v) * min(beard.cheeks * growth, 1.0), beard.colour)
    if beard.moustache > 0:
        top = traits.nose.tip_v + 0.02 * variation.pitch + 0.022
        bottom = mouth_v - mouth.upper_lip
        lip = canvas.around(mouth_u, (top + bottom) / 2, 1.2 * mouth.half_width)
        curve = (top + bottom) / 2 + 0.02 * np.square((lip.u - mouth_u) / mouth.half_width)
        alpha = lip.band(curve, (bottom - top) / 2 + 0.004, np.abs(lip.u - mouth_u) - 1.1 * mouth.half_width)
        lip.paint(alpha * min(beard.moustache * growth, 1.0), beard.colour)
    if beard.goatee > 0:
        chin = canvas.around(mouth_u, mouth_v + 0.1, 0.12)
        below_lip = chin.cover(mouth_v + mouth.lower_lip + 0.008 - chin.v)
        alpha = chin.face * below_lip * chin.ellipse(mouth_u, mouth_v + 0.1, 0.075, 0.12)
        chin.paint(alpha * min(beard.goatee * growth, 1.0), beard.colour)


def _draw_nose(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    nose = traits.nose
    tip_u = variation.yaw * NOSE_DEPTH
    tip_v = nose.tip_v + 0.02 * variation.pitch
    bridge_top = traits.eyes.centre_v + 0.01
    shadow = 0.16 * nose.shading
    region = canvas.around(tip_u, (bridge_top + tip_v) / 2 + 0.02, (tip_v - bridge_top) / 2 + 0.05)
    for side in (-1.0, 1.0):
        lit = side * variation.light[0]  # the wall that faces the light is paler
        wall = region.ellipse(0.7 * tip_u + side * 0.8 * nose.half_width, (bridge_top + tip_v) / 2,
                              0.012, (tip_v - bridge_top) / 2)
        region.darken(wall, shadow * (0.6 - 0.5 * lit))
        nostril = region.ellipse(tip_u + side * 0.45 * nose.half_width, tip_v + 0.009, 0.3 * nose.half_width, 0.007)
        region.darken(nostril, 0.5)
    under_tip = region.ellipse(tip_u, tip_v + 0.026, 0.9 * nose.half_width, 0.009)
    region.darken(under_tip, shadow * (1.0 + max(-variation.light[1], 0.0)))
    region.paint(region.ellipse(tip_u, tip_v - 0.012, 0.5 * nose.half_width, 0.016) * 0.12, (1.0, 1.0, 1.0))


def _draw_mouth(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    mouth = traits.mouth
    centre_u = variation.yaw * MOUTH_DEPTH
    centre_v = mouth.centre_v + 0.015 * variation.pitch
    half_width = mouth.half_width * (1.0 + 0.15 * variation.smile - 0.1 * variation.mouth_open)
    lips = canvas.around(centre_u, centre_v, half_width + 0.05)
    across = (lips.u - centre_u) / half_width
    profile = np.maximum(1.0 - np.square(across), 0.0)
    middle = centre_v + 0.006 * variation.smile - 0.025 * variation.smile * np.square(across)
    gap = (0.035 * variation.mouth_open + 0.006 * variation.smile) * profile
    top, bottom = middle - gap / 2, middle + gap / 2
    beyond_corners = (np.abs(across) - 1.0) * half_width
    v = lips.v
    if variation.mouth_open > 0 or variation.smile > 0:
        inside = lips.cover(np.maximum(np.maximum(top - v, v - bottom), beyond_corners))
        lips.paint(inside, MOUTH_INSIDE)
        teeth = np.maximum(np.maximum(top - v, v - (top + 0.012 * profile)), beyond_corners + 0.15 * half_width)
        lips.paint(inside * lips.cover(teeth), TEETH)
    upper_lip = np.maximum(np.maximum(top - mouth.upper_lip * profile - v, v - top), beyond_corners)
    lips.paint(lips.cover(upper_lip), _scaled(mouth.colour, (0.9, 0.9, 0.9)))
    lower_lip = np.maximum(np.maximum(bottom - v, v - bottom - mouth.lower_lip * profile), beyond_corners)
    lips.paint(lips.cover(lower_lip), mouth.colour)
    lips.darken(lips.band(middle, 0.002 + gap / 2, beyond_corners), 0.5)


def _draw_eyes(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    eyes = traits.eyes
    upper = eyes.opening * (1.0 - variation.squint)
    lower = 0.7 * eyes.opening * (1.0 - 0.5 * variation.squint)
    for side in (-1.0, 1.0):
        centre_u = side * eyes.spacing
        half_width = eyes.half_width * (1.0 - 0.2 * side * variation.yaw)  # the far eye looks narrower
        eye = canvas.around(centre_u, eyes.centre_v, max(1.4 * half_width, 2.4 * eyes.opening + 0.006))
        eye.darken(eye.ellipse(centre_u, eyes.centre_v - 0.006, 1.35 * half_width, 2.4 * eyes.opening), 0.12)
        across = (eye.u - centre_u) / half_width
        profile = np.maximum(1.0 - np.square(across), 0.0)  # the lids meet at the corners
        centre_line = eyes.centre_v - side * eyes.tilt * across
        dv = eye.v - centre_line
        beyond_corners = (np.abs(across) - 1.0) * half_width
        opening = eye.cover(np.maximum(np.maximum(-dv - upper * profile, dv - lower * profile), beyond_corners))
        iris_u = centre_u + 0.35 * variation.gaze[0] * half_width
        iris_v = eyes.centre_v + 0.3 * variation.gaze[1] * eyes.opening
        eye.paint(opening, SCLERA)
        eye.paint(opening * eye.ellipse(iris_u, iris_v, eyes.iris_radius, eyes.iris_radius), eyes.iris)
        pupil = 0.45 * eyes.iris_radius
        eye.paint(opening * eye.ellipse(iris_u, iris_v, pupil, pupil), (0.03, 0.02, 0.02))
        lashes = eye.band(centre_line - upper * profile, 0.0035, beyond_corners - 0.08 * half_width)
        eye.paint(lashes, (0.08, 0.05, 0.04))


def _draw_brows(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    brows, eyes = traits.brows, traits.eyes
    centre_v = eyes.centre_v - brows.gap - 0.012 * variation.brow_raise + 0.008 * variation.squint
    for side in (-1.0, 1.0):
        centre_u = side * (eyes.spacing + 0.004)
        brow = canvas.around(centre_u, centre_v, brows.half_length + 0.03)
        across = (brow.u - centre_u) / brows.half_length
        outward = side * across  # -1 at the inner end, +1 at the outer end
        curve = centre_v - brows.arch * (1.0 - np.square(across)) + brows.tilt * outward
        half_thickness = 0.5 * brows.thickness * (1.15 - 0.45 * outward)
        brow.paint(brow.band(curve, half_thickness, (np.abs(across) - 1.0) * brows.half_length), brows.colour)


def _draw_hair_front(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    """Hair over the forehead, down to a hairline that dips at the temples and tilts with the parting."""
    hair = traits.hair
    outer, du = _hair_outline(canvas, traits, variation)
    relative_u = du / traits.face.half_width
    hairline = (hair.hairline_v + variation.hairline_shift - 0.02 * variation.pitch
                + (hair.temple_dip * relative_u + 0.1 * hair.part_tilt) * relative_u)
    canvas.paint(canvas.cover(np.maximum(outer, canvas.v - hairline)), hair.colour)


def _draw_glasses(canvas: _Canvas, traits: IdentityTraits) -> None:
    glasses, eyes, face = traits.glasses, traits.eyes, traits.face
    half_u = 1.4 * eyes.half_width * glasses.size
    half_v = 0.95 * eyes.half_width * glasses.size
    centre_v = eyes.centre_v + 0.004
    half_frame = glasses.frame_width / 2
    for side in (-1.0, 1.0):
        lens = canvas.around(side * eyes.spacing, centre_v, half_u + glasses.frame_width)
        du = np.abs(lens.u - side * eyes.spacing) / half_u
        dv = np.abs(lens.v - centre_v) / half_v
        oval = np.sqrt(np.square(du) + np.square(dv))
        distance = (oval + glasses.squareness * (np.maximum(du, dv) - oval) - 1.0) * half_v
        lens.paint(lens.cover(distance) * glasses.tint, (0.05, 0.05, 0.08))
        lens.paint(lens.cover(np.abs(distance) - half_frame), glasses.colour)
    strip = canvas.around(0.0, centre_v, face.half_width)
    bridge = np.maximum(np.abs(strip.v - (centre_v - 0.3 * half_v)) - half_frame,
                        np.abs(strip.u) - (eyes.spacing - half_u) - half_frame)
    arm_middle = (face.half_width + eyes.spacing + half_u) / 2
    arm_half_length = (face.half_width - eyes.spacing - half_u) / 2
    arms = np.maximum(np.abs(strip.v - (centre_v - 0.5 * half_v)) - half_frame,
                      np.abs(np.abs(strip.u) - arm_middle) - arm_half_length)
    strip.paint(strip.cover(np.minimum(bridge, arms)), glasses.colour)


def _draw_occlusion(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation,
                    face_distance: np.ndarray) -> None:
    occlusion = variation.occlusion
    if occlusion.kind == "mask":  # a face mask from just below the nose tip to the chin
        top = traits.nose.tip_v + 0.02 * variation.pitch + occlusion.centre[1]
        relative_u = (canvas.u - variation.yaw * MOUTH_DEPTH) / traits.face.half_width
        edge = top + 0.06 * np.square(relative_u)
        mask = canvas.cover(np.maximum(face_distance - 0.012, edge - canvas.v))
        canvas.paint(mask, occlusion.colour)
        for pleat in (0.06, 0.11):
            canvas.darken(mask * canvas.band(edge + pleat, 0.003, np.abs(relative_u) - 0.8), 0.15)
        return
    cos, sin = math.cos(occlusion.angle), math.sin(occlusion.angle)
    dx, dy = canvas.x - occlusion.centre[0], canvas.y - occlusion.centre[1]
    # in face units, so that cover() anti-aliases over one pixel
    along = (cos * dx + sin * dy) / variation.scale
    across = (cos * dy - sin * dx) / variation.scale
    half_along, half_across = (half / variation.scale for half in occlusion.half_size)
    if occlusion.kind == "rectangle":
        distance = np.maximum(np.abs(along) - half_along, np.abs(across) - half_across)
    else:  # a hand: palm, four fingers along the hand's axis, and a thumb
        distance = _ellipse_distance(along, across, 0.8 * half_along, half_across)
        for finger in range(4):
            length = 0.65 * half_along * (1.0 - 0.15 * abs(finger - 1.5))
            finger_distance = _ellipse_distance(along - 0.8 * half_along - 0.7 * length,
                                                across - (finger - 1.5) * 0.5 * half_across, length, 0.22 * half_across)
            distance = np.minimum(distance, finger_distance)
        thumb = _ellipse_distance(along - 0.1 * half_along, across - 1.05 * half_across, 0.45 * half_along,
                                  0.25 * half_across)
        distance = np.minimum(distance, thumb)
    canvas.paint(canvas.cover(distance), occlusion.colour)


def _apply_lighting(canvas: _Canvas, traits: IdentityTraits, variation: ImageVariation) -> None:
    """Wrapped Lambert shading of a head-sized ellipsoid, and a gentle gradient on the background."""
    face = traits.face
    light_x, light_y, light_z = variation.light
    normal_u = (canvas.u - variation.yaw * OUTLINE_DEPTH) / (1.15 * face.half_width)
    normal_v = (canvas.v - face.centre_v) / (1.05 * face.half_height)
    radius_squared = np.square(normal_u) + np.square(normal_v)
    normal_z = np.sqrt(np.maximum(1.0 - radius_squared, 0.0))
    facing = (normal_u * light_x + normal_v * light_y + normal_z * light_z + 0.4) / 1.4
    strength = variation.light_strength
    head_shading = (1.0 - strength) + 1.3 * strength * np.clip(facing, 0.0, 1.0)
    background_shading = 1.0 + 0.6 * strength * ((canvas.x - 0.5) * light_x + (canvas.y - 0.5) * light_y)
    head = canvas.cover((np.sqrt(radius_squared) - 1.0) * face.half_width)
    canvas.colours *= background_shading + head * (head_shading - background_shading)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 3 x H x W image with edge padding; `sigma` in pixels."""
    radius = max(1, math.ceil(2.5 * sigma))
    weights = [math.exp(-0.5 * (offset / sigma) ** 2) for offset in range(-radius, radius + 1)]
    weights = [weight / sum(weights) for weight in weights]
    for axis in (1, 2):
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(image, padding, mode="edge")
        length = image.shape[axis]
        image = sum(weight * padded.take(range(offset, offset + length), axis=axis)
                    for offset, weight in enumerate(weights))
    return image


def _apply_camera(colours: np.ndarray, variation: ImageVariation) -> np.ndarray:
    """Contrast, white balance and exposure, lens blur, sensor noise; then H x W x 3 8-bit RGB."""
    colours = (colours - 0.5) * variation.contrast + 0.5
    colours *= np.asarray(variation.colour_gain, dtype=np.float32)[:, None, None] * variation.brightness
    if variation.grayscale:
        colours[...] = 0.299 * colours[0] + 0.587 * colours[1] + 0.114 * colours[2]
    sigma = variation.blur * colours.shape[-1]
    if sigma > 0.3:
        colours = _blur(colours, sigma)
    # uniform rather than Gaussian noise: no per-pixel logarithms, whose last bit may vary by CPU
    uniform = np.random.default_rng(variation.noise_seed).random(colours.shape, dtype=np.float32) - 0.5
    colours += uniform * (variation.noise * math.sqrt(12.0))
    pixels = (np.clip(colours, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def render_face(traits: IdentityTraits, variation: ImageVariation, size: int) -> np.ndarray:
    """One size x size x 3 uint8 RGB image of the person `traits` seen as `variation` describes."""
    canvas = _Canvas(size, variation)
    _draw_background(canvas, variation)
    _draw_hair_back(canvas, traits, variation)
    _draw_body(canvas, traits, variation)
    _draw_ears(canvas, traits, variation)
    face_distance = _face_distance(canvas, traits.face, variation)
    canvas.face[...] = canvas.cover(face_distance)
    canvas.paint(canvas.face, traits.face.skin)
    _draw_marks(canvas, traits, variation)
    _draw_beard(canvas, traits, variation)
    _draw_nose(canvas, traits, variation)
    _draw_mouth(canvas, traits, variation)
    _draw_eyes(canvas, traits, variation)
    _draw_brows(canvas, traits, variation)
    _draw_hair_front(canvas, traits, variation)
    if traits.glasses is not None and variation.glasses_on:
        _draw_glasses(canvas, traits)
    if variation.occlusion is not None:
        _draw_occlusion(canvas, traits, variation, face_distance)
    _apply_lighting(canvas, traits, variation)
    return _apply_camera(canvas.colours, variation)


def render_image(seed: int, identity: int, image: int, size: int) -> np.ndarray:
    """Image `image` of person `identity`, exactly as `generate_split` writes it before encoding."""
    return render_face(sample_traits(seed, identity), sample_variation(seed, identity, image), size)


def identity_name(identity: int) -> str:
    """Folder name of person `identity`; zero-padded so that sorted names follow identity order."""
    return f"id{identity:07d}"


def image_name(image: int) -> str:
    return f"{image:04d}.jpg"


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG at quality 95 without chroma subsampling, which would smear eyes and lips at 64 px."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """A crash leaves at most a `.partial` file, never a truncated image under the final name."""
    with written_atomically(path) as partial:
        partial.write_bytes(data)


@dataclass(frozen=True)
class _IdentityJob:
    out_dir: Path
    identity: int
    images_per_identity: int
    size: int
    seed: int


def _write_identity(job: _IdentityJob) -> int:
    """Render and write every image of one person; runs in a worker process."""
    traits = sample_traits(job.seed, job.identity)
    folder = job.out_dir / identity_name(job.identity)
    folder.mkdir(exist_ok=True)
    for image in range(job.images_per_identity):
        pixels = render_face(traits, sample_variation(job.seed, job.identity, image), job.size)
        _write_atomically(folder / image_name(image), encode_jpeg(pixels))
    return job.images_per_identity


def _run(jobs: list[_IdentityJob], workers: int) -> Iterator[int]:
    if workers == 1:
        yield from map(_write_identity, jobs)
        return
    # spawn: workers import this module afresh instead of inheriting a forked copy of the parent's
    # threads and state; the same on every OS
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_write_identity, jobs)


def _check_folder(out_dir: Path, identities: Sequence[int], images_per_identity: int) -> None:
    """Refuse a folder holding files this split would not write: a reader would mix them in."""
    expected_images = {image_name(image) for image in range(images_per_identity)}
    expected_files = expected_images | {name + ".partial" for name in expected_images}
    expected_folders = {identity_name(identity) for identity in identities}
    for entry in sorted(out_dir.iterdir()):
        unexpected = [] if entry.name in expected_folders and entry.is_dir() else [entry]
        if not unexpected:
            unexpected = sorted(path for path in entry.iterdir() if path.name not in expected_files)
        if unexpected:
            raise FacekdError(
                f"{unexpected[0]}: not part of the requested split ({len(identities)} identities x "
                f"{images_per_identity} images); remove it or write to an empty folder"
            )


def _check_arguments(identities: Sequence[int], images_per_identity: int, size: int, seed: int, workers: int) -> None:
    for name, value, lowest in (("images_per_identity", images_per_identity, 1), ("size", size, MIN_SIZE),
                                ("seed", seed, 0), ("workers", workers, 1)):
        if not isinstance(value, int) or value < lowest:
            raise FacekdError(f"synthetic data: {name} is {value!r}; expected an int >= {lowest}")
    if len(identities) == 0 or min(identities) < 0 or len(set(identities)) != len(identities):
        raise FacekdError("synthetic data: identity indices must be a non-empty list of distinct non-negative ints")


def generate_split(out_dir: str | os.PathLike[str], identity_ids: Sequence[int], images_per_identity: int, size: int,
                   seed: int, workers: int = 1, progress: bool = True) -> int:
    """Write `out_dir/<identity>/<NNNN>.jpg` for the given identity indices; returns the image count.

    The output depends only on the arguments other than `workers` and `progress`; a rerun
    rewrites the same bytes, which also completes a run that was interrupted. Workers are
    spawned, so a script that calls this with `workers` > 1 needs `if __name__ == "__main__":`.
    """
    _check_arguments(identity_ids, images_per_identity, size, seed, workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_folder(out_dir, identity_ids, images_per_identity)
    jobs = [_IdentityJob(out_dir, identity, images_per_identity, size, seed) for identity in identity_ids]
    written = 0
    with tqdm(total=len(jobs) * images_per_identity, desc=out_dir.name, unit="img", disable=not progress) as bar:
        for count in _run(jobs, workers):
            written += count
            bar.update(count)
    return written


def generate(out_root: str | os.PathLike[str], teacher_identities: int, teacher_images: int,
             student_identities: int, student_images: int, heldout_identities: int, heldout_images: int,
             size: int, seed: int, workers: int = 1, progress: bool = True) -> dict[str, int]:
    """Write the teacher, student and held-out splits under `out_root`; returns images per split.

    Splits hold disjoint people: each split's identity indices start at its own offset
    (`SPLIT_FIRST_IDENTITY`), so changing one split's size leaves the others' images unchanged.
    """
    splits = {
        "teacher": (teacher_identities, teacher_images),
        "student": (student_identities, student_images),
        "heldout": (heldout_identities, heldout_images),
    }
    for name, (count, _) in splits.items():
        if not isinstance(count, int) or not 1 <= count <= MAX_IDENTITIES_PER_SPLIT:
            raise FacekdError(f"synthetic data: {name}_identities is {count!r}; expected 1..{MAX_IDENTITIES_PER_SPLIT}")
    written = {}
    for name, (count, images) in splits.items():
        first = SPLIT_FIRST_IDENTITY[name]
        written[name] = generate_split(Path(out_root) / name, range(first, first + count), images, size, seed,
                                       workers, progress)
    return written
