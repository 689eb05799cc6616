"""Book §4.9: the attribute checker reads real rendered shapes back without a mistake.

Files under test: diffcourse/latent/attributes.py.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.data.shapes import make_shapes, render_objects
from diffcourse.latent.attributes import ATTRIBUTES, attribute_matches, parse_caption, read_attributes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checker_is_right_on_real_images():
    images, captions, objects = make_shapes(120, seed=21, max_shapes=1)
    m = attribute_matches(images, captions)
    for a in ATTRIBUTES:
        wrong = (~m[a]).nonzero().flatten().tolist()
        assert not wrong, f"{a}: the checker misreads {len(wrong)} real images, e.g. {captions[wrong[0]]!r} " \
                          f"read as {read_attributes(images[wrong[0]])}"


def test_checker_sees_a_wrong_prompt():
    images, captions, _ = make_shapes(60, seed=22, max_shapes=1)
    swapped = captions[1:] + captions[:1]                                    # each image with another caption
    m = attribute_matches(images, swapped)
    same = torch.tensor([a == b for a, b in zip(captions, swapped)])
    assert not (m["all"] & ~same).any(), "an image should not match another object's caption"
    assert m["colour"].float().mean() < 0.5, "colours of shuffled captions should mostly disagree"


def test_parse_caption_inverts_caption_for():
    _, captions, objects = make_shapes(30, seed=23, max_shapes=2)
    for c, objs in zip(captions, objects):
        assert parse_caption(c) == [{k: o[k] for k in ("size", "colour", "shape", "position")} for o in objs]
    with pytest.raises(ValueError, match="colour 'purple'"):
        parse_caption("a small purple circle at the top left")


def test_empty_image_and_caption_count_errors():
    blank = render_objects([], 32)
    assert read_attributes(blank)["colour"] is None
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        attribute_matches(torch.stack([blank, blank]), ["a small red circle at the top left"])
