"""`build_tiny_vlm(image_mean=..., image_std=...)`: the processor it saves normalises pixels there.

The hallucination bench centres pixels on its scenes' background so that an empty patch is zero
and a fresh vision tower's features are the shapes (without it the tiny policy learnt to ignore
the image). The default stays CLIP's, which other callers rely on.
"""

import pytest
from PIL import Image
from transformers import AutoProcessor

from training.scenes import BACKGROUND
from training.vision import build_tiny_vlm

CORPUS = ["What colour is the square? The square is red."] * 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    centred = build_tiny_vlm(
        root / "centred",
        corpus=CORPUS,
        image_mean=[c / 255 for c in BACKGROUND],
        image_std=[0.25] * 3,
    )
    default = build_tiny_vlm(root / "default", corpus=CORPUS)
    return AutoProcessor.from_pretrained(str(centred)), AutoProcessor.from_pretrained(str(default))


def test_a_background_image_is_zero_and_a_shape_is_not(built):
    centred, default = built
    image = Image.new("RGB", (32, 32), BACKGROUND)
    pixels = centred.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.abs().max().item() < 0.02  # the background, up to rounding to 8 bits
    for x in range(8, 16):
        for y in range(8, 16):
            image.putpixel((x, y), (214, 48, 49))
    pixels = centred.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels[0, :, 8:16, 8:16].abs().mean().item() > 1.0
    assert pixels[0, :, 20:, 20:].abs().max().item() < 0.02


def test_the_default_normalisation_is_still_clips(built):
    _, default = built
    assert default.image_processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    image = Image.new("RGB", (32, 32), BACKGROUND)
    pixels = default.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.mean().item() > 1.0  # the light background far from CLIP's mean
