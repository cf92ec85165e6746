"""The rasteriser: a person's traits and one image's variation -> size x size x 3 RGB pixels.

Faces are laid out like insightface's 112x112 aligned crops (eyes near x = 0.34 and 0.66,
y = 0.46; mouth near y = 0.82), at any resolution. Rendering uses numpy only; per pixel it uses
only arithmetic and square roots, which are exactly rounded whatever SIMD code numpy picks, so the
same traits give byte-identical pixels on every machine.

Geometry is written in face coordinates: u to the right, v down, in units of the image width,
origin at the image centre of an unposed face. Pose maps them to image coordinates.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.data.synth.traits import (
    Colour, Face, IdentityTraits, ImageVariation, sample_traits, sample_variation, scaled,
)

SCLERA: Colour = (0.90, 0.88, 0.85)
MOUTH_INSIDE: Colour = (0.30, 0.08, 0.08)
TEETH: Colour = (0.92, 0.90, 0.82)

# How far a feature moves sideways per unit of yaw (1 is about 45 degrees); eyes stay put, as alignment keeps them.
NOSE_DEPTH, MOUTH_DEPTH, OUTLINE_DEPTH, EAR_DEPTH = 0.06, 0.03, -0.05, -0.07


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
    canvas.paint(canvas.cover(neck), scaled(face.skin, (0.82, 0.82, 0.82)))
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
    skin = scaled(face.skin, (0.92, 0.9, 0.9))
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
        spot.paint(alpha * mole.darkness, scaled(skin, (0.45, 0.35, 0.3)))
    if traits.scar is not None:
        scar = traits.scar
        line = canvas.around(scar.u + offset_u, scar.v, scar.half_length)
        cos, sin = math.cos(scar.angle), math.sin(scar.angle)
        du, dv = line.u - (scar.u + offset_u), line.v - scar.v
        along, across = cos * du + sin * dv, cos * dv - sin * du
        distance = np.maximum(np.abs(across) - 0.003, np.abs(along) - scar.half_length)
        line.paint(line.face * line.cover(distance) * 0.7, scaled(skin, (1.12, 0.92, 0.92)))


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
    lips.paint(lips.cover(upper_lip), scaled(mouth.colour, (0.9, 0.9, 0.9)))
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

