"""The chapter 6 app's logic without a browser (diffcourse/control/app.py; the browser test drives the same code
through Voilà): uploads are read or refused with a message, a refused upload loses nothing, an upload gives a
new edge map and image, the same controls give the same image, and a missing ControlNet falls
back to an untrained one that says so.
"""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from diffcourse.control.app import (MAX_UPLOAD_BYTES, SIZE, UploadError, build_app, edge_condition, generate,
                                    load_app_pipeline, preset_caption, preset_image, read_upload)

pytestmark = pytest.mark.usefixtures("one_thread")


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def square(w=64, h=48, box=(6, 6, 26, 26), colour=(255, 255, 0), mode="RGB") -> Image.Image:
    from PIL import ImageDraw

    img = Image.new(mode, (w, h), (0, 0, 0, 0) if mode == "RGBA" else "black")
    ImageDraw.Draw(img).rectangle(box, fill=colour)
    return img


@pytest.mark.parametrize("data, says", [
    (b"", "empty"),
    (b"\x00" * (MAX_UPLOAD_BYTES + 1), "too large"),
    (b"not an image at all", "not a readable PNG or JPEG"),
    (png(square())[:60], "not a readable PNG or JPEG"),                       # cut off mid-stream (130 bytes whole)
    (png(square(), "GIF"), "a GIF image"),
    (png(square(), "BMP"), "a BMP image"),
])
def test_a_bad_upload_is_refused_with_a_message(data, says):
    with pytest.raises(UploadError, match=says) as err:
        read_upload(data, "photo.png")
    assert "photo.png" in str(err.value), "the message should name the file"


def test_an_upload_of_any_size_and_mode_becomes_a_model_sized_image():
    wide = read_upload(png(square(64, 48)))                                   # centre-cropped to 48 x 48, then 32
    assert wide.shape == (3, SIZE, SIZE) and wide.min() >= -1 and wide.max() <= 1
    assert wide[2].max() == -1 and wide[0].max() > 0.9, "yellow has no blue and full red"
    tiny = read_upload(png(square(16, 16, (0, 0, 7, 7))))                      # enlarged
    assert tiny.shape == (3, SIZE, SIZE) and tiny[:, :8, :8].mean() > tiny[:, 24:, 24:].mean()
    clear = read_upload(png(square(40, 40, (0, 0, 9, 9), (0, 255, 0, 255), mode="RGBA")))
    assert clear[:, -4:, -4:].max() == -1, "transparent pixels must become the shapes' black background"
    jpeg = read_upload(png(square(32, 32), "JPEG"))
    assert jpeg.shape == (3, SIZE, SIZE)


def test_presets_use_the_training_captions_and_reject_unknown_words():
    assert preset_caption("square", "blue", "top left", "small") .startswith("a small blue square")
    image = preset_image("square", "blue", "top left", "small")               # (3, 32, 32)
    cond = edge_condition(image)
    assert cond.shape == (1, 3, SIZE, SIZE) and set(cond.unique().tolist()) <= {0.0, 1.0}
    ys, xs = cond[0, 0].nonzero(as_tuple=True)
    assert ys.float().mean() < SIZE / 2 and xs.float().mean() < SIZE / 2, "a top-left shape's edges sit top-left"
    with pytest.raises(ValueError, match="hexagon"):
        preset_image("hexagon")


@pytest.fixture(scope="module")
def app():
    return build_app(load_app_pipeline())


def test_the_app_draws_the_preset_with_the_trained_controlnet(app):
    assert app.app_pipe.trained, app.app_pipe.note
    assert app.output is not None and app.output.shape == (3, SIZE, SIZE)
    assert app.prompt.value == "a large red circle in the center"
    assert "generated in" in app.message


def test_a_refused_upload_keeps_the_picture_and_an_upload_is_drawn_from_its_edges(app):
    before = (app.source.clone(), app.condition.clone(), app.output.clone(), app.prompt.value)
    assert not app.load_upload_bytes(b"GIF89a garbage", "bad.gif")
    assert "bad.gif" in app.message and "not a readable" in app.message
    assert torch.equal(app.source, before[0]) and torch.equal(app.output, before[2]) and app.prompt.value == before[3]

    assert app.load_upload_bytes(png(square()), "square.png")
    assert app.prompt.value == before[3], "an upload changes the source, not the person's prompt"
    assert not torch.equal(app.condition, before[1]) and not torch.equal(app.output, before[2])
    assert "generated in" in app.message, app.message


def test_the_same_controls_give_the_same_image_and_lambda_matters(app):
    cond = edge_condition(preset_image("triangle", "green", "bottom right", "large"))
    a = generate(app.app_pipe, cond, "", "none", 1.0, 1.0, seed=3, steps=4)
    b = generate(app.app_pipe, cond, "", "none", 1.0, 1.0, seed=3, steps=4)
    off = generate(app.app_pipe, cond, "", "none", 1.0, 0.0, seed=3, steps=4)
    assert torch.equal(a, b), "a fixed seed must give the same image"
    assert (a - off).abs().max() > 0.05, "the trained ControlNet at lambda = 1 should change the image"
    with pytest.raises(ValueError, match="style must be one of"):
        generate(app.app_pipe, cond, "", "sepia")


def test_without_the_zoo_controlnet_the_app_says_it_is_untrained(tmp_path):
    fallback = load_app_pipeline(controlnet_folder=tmp_path / "missing")
    assert not fallback.trained and "UNTRAINED" in fallback.note
    cond = edge_condition(preset_image())
    on = generate(fallback, cond, "", "none", 1.0, 2.0, seed=0, steps=3)
    off = generate(fallback, cond, "", "none", 1.0, 0.0, seed=0, steps=3)
    assert torch.equal(on, off), "an untrained ControlNet's zero convolutions add nothing at any lambda"
