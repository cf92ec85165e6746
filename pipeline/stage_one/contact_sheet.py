"""A contact sheet of mined pairs: each pair's two images side by side, captioned with its score.

This is what a user looks at to judge the mining: a "hard negative" at similarity 0.9 whose two
faces are one person is label noise. Only the images of the drawn pairs are decoded.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.errors import FacekdError
from pipeline.stage_one.pair_queries import PairRecord

PADDING = 8
LINE_HEIGHT = 13
CAPTION_LINES = 3
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def cell_origin(position: int, columns: int, tile: int) -> tuple[int, int]:
    """Top-left pixel of pair `position`: its anchor tile starts here, the partner tile `tile` to the right."""
    cell_width, cell_height = 2 * tile + PADDING, tile + CAPTION_LINES * LINE_HEIGHT + PADDING
    return PADDING + (position % columns) * cell_width, PADDING + (position // columns) * cell_height


def thumbnail(image: np.ndarray, tile: int) -> Image.Image:
    return Image.fromarray(image).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)


def _fit(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, width: int) -> str:
    """`text`, cut at the front (keys differ at their end) until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def caption(record: PairRecord) -> list[str]:
    return [
        f"{record.kind} #{record.rank}  similarity {record.similarity:.3f}",
        f"{record.anchor_key} ({record.anchor_identity})",
        f"{record.partner_key} ({record.partner_identity})",
    ]


def draw_contact_sheet(
    records: list[PairRecord], load_image: Callable[[str], np.ndarray], *, columns: int, tile: int
) -> Image.Image:
    """Pairs in a grid of `columns`, anchor left and partner right, three caption lines below; images by key."""
    if not records:
        raise FacekdError("no pairs to draw: the selection is empty")
    columns = min(columns, len(records))
    rows = -(-len(records) // columns)
    right, bottom = cell_origin(columns * rows - 1, columns, tile)
    sheet = Image.new("RGB", (right + 2 * tile + PADDING, bottom + tile + CAPTION_LINES * LINE_HEIGHT + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for position, record in enumerate(records):
        x, y = cell_origin(position, columns, tile)
        sheet.paste(thumbnail(load_image(record.anchor_key), tile), (x, y))
        sheet.paste(thumbnail(load_image(record.partner_key), tile), (x + tile, y))
        for line_number, line in enumerate(caption(record)):
            draw.text((x, y + tile + 2 + line_number * LINE_HEIGHT), _fit(draw, font, line, 2 * tile), fill=TEXT_COLOUR, font=font)
    return sheet
