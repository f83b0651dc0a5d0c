"""The red and blue squares the vision-language training tests learn from.

A question only the image answers: each image is one large square, red or blue, and the chosen
answer names its colour, the rejected one the other. Each text is thus chosen once and rejected
once, so the texts alone cannot bring a DPO or Bradley–Terry loss below ln 2 on average; only the
pixels can. The square fills most of the view because a fresh 1-layer tower at 32 px hardly tells
a scene's small shapes apart (see ``training.vision``), and these tests are about training
reaching the pixels, not about how well a tiny tower sees.

Imported explicitly (``from tests.training.vision_support import ...``), as
``conftest_policy`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from training import scenes

QUESTION = "What colour is the square in the centre?"
COLOURS = ("red", "blue")


def square(colour: str, offset: int) -> Image.Image:
    """A 64-pixel image on the scenes' background: a 44-pixel square of ``colour``, its corner
    ``offset`` pixels from the left edge (offsets make images that differ in more than colour)."""
    image = Image.new("RGB", (64, 64), scenes.BACKGROUND)
    corner = (offset, 64 - 48 - offset)
    ImageDraw.Draw(image).rectangle(
        (*corner, corner[0] + 44, corner[1] + 44),
        fill=scenes.COLOURS[colour],
        outline=scenes.OUTLINE,
    )
    return image


def square_path(colour: str, offset: int) -> str:
    """Where a square's image lives in an export directory."""
    return f"images/{colour}-{offset}.png"


def said(colour: str) -> str:
    return f"The square in the centre is {colour}."


def reply(text: str) -> list[dict[str, Any]]:
    """An assistant answer as the ``vision_pairs`` export writes it (text parts)."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def pair_row(image: str, chosen: str, rejected: str, **extra: Any) -> dict[str, Any]:
    """A ``vision_pairs`` row asking ``QUESTION`` about the one ``image``."""
    return {
        "images": [image],
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
        ],
        "chosen": reply(chosen),
        "rejected": reply(rejected),
        **extra,
    }


def colour_row(image: str, colour: str, **extra: Any) -> dict[str, Any]:
    """The true colour chosen, the other one rejected."""
    other = next(c for c in COLOURS if c != colour)
    return pair_row(image, said(colour), said(other), **extra)


def export_squares(export_dir: Path, offsets: list[int], **extra: Any) -> list[dict[str, Any]]:
    """A red and a blue square per offset, saved under ``export_dir/images/``, and their
    ``colour_row`` rows (with ``extra`` keys)."""
    (export_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for offset in offsets:
        for colour in COLOURS:
            relative = square_path(colour, offset)
            square(colour, offset).save(export_dir / relative)
            rows.append(colour_row(relative, colour, **extra))
    return rows
