"""Book §4.2: the shapes' varied style (backgrounds, textures) keeps the plain style and the captions as they were.

Files under test: diffcourse/data/shapes.py.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.data.shapes import BACKGROUNDS, TEXTURES, ShapesDataset, draw_style, make_shapes, render_objects


def test_plain_is_the_default_and_unchanged():
    images, captions, objects = make_shapes(8, seed=4)
    again = torch.stack([render_objects(o, 32) for o in objects])
    assert torch.equal(images, again), "the default style must still be flat shapes on black"
    assert torch.equal(images, make_shapes(8, seed=4, style="plain")[0])


def test_varied_style_same_captions_other_pixels():
    plain = ShapesDataset(40, seed=5)
    varied = ShapesDataset(40, seed=5, style="varied")
    for i in range(40):
        a, b = plain[i], varied[i]
        assert a["caption"] == b["caption"] and torch.equal(a["attributes"], b["attributes"])
        assert b["image"].shape == (3, 32, 32) and b["image"].min() >= -1 and b["image"].max() <= 1
    assert not torch.equal(plain[0]["image"], varied[0]["image"]) or not torch.equal(plain[1]["image"], varied[1]["image"])
    assert torch.equal(varied[7]["image"], ShapesDataset(40, seed=5, style="varied")[7]["image"]), "not repeatable"


def test_varied_style_draws_every_background_and_texture():
    g = torch.Generator().manual_seed(0)
    styles = [draw_style(g, 2) for _ in range(200)]
    assert {s["background"] for s in styles} == set(BACKGROUNDS)
    assert {t for s in styles for t in s["textures"]} == set(TEXTURES)
    assert max(max(s["bg_colour"]) for s in styles) <= 0.35, "backgrounds must stay darker than the shapes"


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="unknown style"):
        ShapesDataset(4, style="neon")
