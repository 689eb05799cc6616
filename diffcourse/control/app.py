"""The chapter 6 ControlNet app: an image in, its edge map, a new image in a chosen style out (book §6.2, §6.4, §6.5).

The logic behind ``app/control_app.ipynb`` (run in JupyterLab, or as a web page with ``make app``, which serves
the same notebook with Voilà). Everything here works without a browser, so the tests drive it directly::

    upload (PNG/JPEG bytes) --read_upload--> x (3, 32, 32) in [-1, 1]        resized to the model's size
    x --edge_condition--> y (1, 3, 32, 32) in {0, 1}                           Canny edges, eq. 6.6 (§6.5)
    (prompt, y, lambda, style, s, seed) --generate--> image (3, 32, 32) in [0, 1]
        StableDiffusionControlNetPipeline: the U-Net plus lambda times the ControlNet's residuals (eq. 6.5, §6.5),
        with a style LoRA (zoo shapes_lora_dusk / shapes_lora_teal) at adapter weight s (§6.4)

:func:`load_app_pipeline` loads the zoo's trained ``shapes_controlnet``; if that entry is missing or fails its
hash check it falls back to ``ControlNetModel.from_unet`` -- untrained, so it adds nothing at any lambda (its
zero convolutions, eq. 6.1) -- and says so in its note, which the app shows. :func:`build_app` assembles the
ipywidgets interface; :func:`preset_image` is the "draw" substitute (a shape placed by dropdowns), since
drawing needs a canvas widget the course does not ship.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.shapes import COLOURS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES, render_objects
from .edges import as_condition, canny
from .train_lora import STYLE_LORAS

__all__ = ["SIZE", "MAX_UPLOAD_BYTES", "STYLES", "UploadError", "read_upload", "preset_image", "preset_caption", "edge_condition",
           "AppPipeline", "load_app_pipeline", "set_style", "generate", "to_png", "ControlApp", "build_app"]

#: The model's image size: chapter 4's shapes_sd draws 32 x 32 images (book §6.2).
SIZE = 32
#: Uploads larger than this are refused before decoding (a 32 x 32 model needs no 20-megapixel photo).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: The style dropdown: no LoRA, or one of the zoo's style LoRAs (book §6.4).
STYLES = ("none", *STYLE_LORAS)
_FORMATS = {"PNG", "JPEG"}


class UploadError(ValueError):
    """An upload the app cannot use; its message is shown in the app as is."""


def read_upload(data: bytes, name: str = "upload", size: int = SIZE) -> torch.Tensor:
    """PNG or JPEG bytes -> the image resized to the model's size, (3, size, size) in [-1, 1] (book §6.5).

    Any mode (grey, palette, RGBA on black) becomes RGB; a non-square image is centre-cropped to a square
    first, then area-averaged down (bicubic up), so a shape keeps its proportions. Raises
    :class:`UploadError` with a readable message for an empty, too large, truncated or non-PNG/JPEG file.
    """
    from PIL import Image, UnidentifiedImageError

    data = bytes(data)
    if not data:
        raise UploadError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {len(data) / 2**20:.1f} MB is too large (at most {MAX_UPLOAD_BYTES // 2**20} MB)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
            if kind not in _FORMATS:
                raise UploadError(f"{name}: a {kind} image; upload a PNG or JPEG file")
            img.load()                                                         # decodes: a truncated file fails here
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                black = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(black, img)                        # transparency -> the shapes' black
            rgb = img.convert("RGB")
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"{name}: not a readable PNG or JPEG image ({type(err).__name__}: {err})") from None
    w, h = rgb.size
    side = min(w, h)
    rgb = rgb.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(side, side, 3)
    x = x.permute(2, 0, 1)[None].float() / 255.0                               # (1, 3, side, side) in [0, 1]
    if side > size:
        x = F.interpolate(x, size=(size, size), mode="area")                   # (1, 3, size, size)
    elif side < size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return x[0] * 2 - 1                                                        # (3, size, size) in [-1, 1]


def preset_image(shape: str = "circle", colour: str = "red", position: str = "center", size_name: str = "large",
                 size: int = SIZE) -> torch.Tensor:
    """The "draw" substitute: one shape on black, placed like the training data (book §5's shapes; §6.5).

    ``position``: one of the nine cells of :data:`~diffcourse.data.shapes.POSITIONS`. Returns (3, size, size)
    in [-1, 1].
    """
    if shape not in SHAPES or colour not in COLOURS or position not in POSITIONS or size_name not in SIZES:
        raise ValueError(f"shape in {SHAPES}, colour in {tuple(COLOURS)}, position in {POSITIONS}, "
                         f"size in {tuple(SIZES)}; got {shape!r}, {colour!r}, {position!r}, {size_name!r}")
    p = POSITIONS.index(position)
    row, col = p // 3, p % 3
    cy, cx = (row + 0.5) * size / 3, (col + 0.5) * size / 3                    # the cell's centre, in pixels
    ob = dict(shape=shape, colour=colour, position=position, size=size_name, center=(cy, cx),
              radius=SIZES[size_name] * size)
    return render_objects([ob], size)                                          # (3, size, size)


def preset_caption(shape: str, colour: str, position: str, size_name: str) -> str:
    """The training captions' wording for a preset: "a large red circle in the center" (book §5)."""
    return f"a {size_name} {colour} {shape} {POSITION_PHRASES[position]}"


def edge_condition(image: torch.Tensor, low: float = 0.2, high: float = 0.5) -> torch.Tensor:
    """Canny edges of ``image`` (3, H, W) in [-1, 1] as a ControlNet condition (1, 3, H, W) in {0, 1}
    (book §6.5, eq. 6.6 and Canny): the maps the zoo ControlNet was trained on."""
    return as_condition(canny(image[None], low, high))                         # (1, 3, H, W)


@dataclass
class AppPipeline:
    """The app's ``StableDiffusionControlNetPipeline`` with both style LoRAs loaded as adapters (book §6.2, §6.4).

    ``trained``: whether the ControlNet is the zoo's trained one; ``note``: what the app shows about it.
    """
    pipe: object
    trained: bool
    note: str
    styles: tuple[str, ...] = field(default_factory=tuple)


def load_app_pipeline(sd_folder=None, controlnet_folder=None, device="cpu") -> AppPipeline:
    """The pipeline the app draws with (book §6.2, §6.4): zoo ``shapes_sd`` + the zoo's trained
    ``shapes_controlnet`` + the style LoRAs of :data:`~diffcourse.control.train_lora.STYLE_LORAS`.

    If the ControlNet cannot be loaded (entry missing, hash mismatch, folder absent), it uses
    ``ControlNetModel.from_unet`` of the same U-Net instead: an *untrained* copy whose zero convolutions add
    nothing (eq. 6.1), so the edges have no effect. The returned note says which one is in use.
    """
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()             # "no LoRA keys for the text encoder" (the LoRAs are U-Net only)
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load_app_pipeline(sd_folder, controlnet_folder, device)
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _load_app_pipeline(sd_folder, controlnet_folder, device) -> AppPipeline:
    from .. import zoo
    from ..latent.pipeline import load_pipeline
    from .controlnet import controlnet_pipeline, diffusers_controlnet, load_controlnet

    base = load_pipeline(sd_folder, device=device)
    try:
        controlnet = load_controlnet(controlnet_folder, device)
        trained = True
        note = "ControlNet: the zoo's trained shapes_controlnet (Canny edges, §6.5)."
    except (zoo.ZooError, FileNotFoundError, OSError, KeyError) as err:
        controlnet = diffusers_controlnet(base.unet).to(device).eval()
        trained = False
        first = str(err).splitlines()[0][:200]
        note = ("UNTRAINED ControlNet (ControlNetModel.from_unet): the trained zoo entry could not be loaded "
                f"({first}). Its zero convolutions add nothing, so the edge map has no effect on the image.")
    pipe = controlnet_pipeline(base, controlnet)
    styles = []
    for style, name in STYLE_LORAS.items():
        pipe.load_lora_weights(str(zoo.verify(name)), adapter_name=style)
        styles.append(style)
    pipe.set_adapters(styles, adapter_weights=[0.0] * len(styles))
    return AppPipeline(pipe, trained, note, tuple(styles))


def set_style(app_pipe: AppPipeline, style: str = "none", scale: float = 1.0) -> None:
    """Adapter weights for the style dropdown and slider (book §6.4, eq. 6.4's s): ``style`` at ``scale``,
    every other LoRA at 0; "none" sets all to 0 (the plain U-Net)."""
    if style not in ("none", *app_pipe.styles):
        raise ValueError(f"style must be one of {('none', *app_pipe.styles)}, got {style!r}")
    weights = [float(scale) if s == style else 0.0 for s in app_pipe.styles]
    app_pipe.pipe.set_adapters(list(app_pipe.styles), adapter_weights=weights)


@torch.no_grad()
def generate(app_pipe: AppPipeline, condition: torch.Tensor, prompt: str = "", style: str = "none",
             lora_scale: float = 1.0, conditioning_scale: float = 1.0, seed: int = 0, steps: int = 10,
             guidance_scale: float = 4.0) -> torch.Tensor:
    """One image from the edge ``condition`` (1, 3, H, W) in {0, 1} (book §6.5, eq. 6.5; §6.4):
    ``StableDiffusionControlNetPipeline`` with ``controlnet_conditioning_scale`` = lambda, the chosen style LoRA
    at weight ``lora_scale``, classifier-free guidance ``guidance_scale`` and a seeded generator.

    Returns (3, H, W) in [0, 1]. The same arguments give the same image.
    """
    set_style(app_pipe, style, lora_scale)
    out = app_pipe.pipe([prompt], image=condition, controlnet_conditioning_scale=float(conditioning_scale),
                        num_inference_steps=int(steps), guidance_scale=float(guidance_scale),
                        generator=torch.Generator().manual_seed(int(seed)), output_type="pt")
    return out.images[0].clamp(0, 1)                                          # (3, H, W)


def to_png(image: torch.Tensor, scale: int = 8) -> bytes:
    """(3, H, W) in [0, 1] (or (1, H, W)) -> PNG bytes, enlarged ``scale`` times with nearest neighbours so the
    32 x 32 pixels stay visible."""
    from PIL import Image

    x = image.detach().float().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)             # (3, H s, W s)
    arr = (x * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class ControlApp:
    """The ipywidgets app (book §6.2, §6.4, §6.5): source image (upload or preset), its edge map, prompt, style
    and sliders, the generated image. Every control redraws; the whole state is readable from Python.

    ``widget``: the top-level ``VBox`` to display. ``source``, ``condition``, ``output``: the current source
    image (3, 32, 32) in [-1, 1], edge condition (1, 3, 32, 32) and generated image (3, 32, 32) in [0, 1].
    ``message``: the status line (upload errors land here; nothing raises out of a callback).
    """

    def __init__(self, app_pipe: AppPipeline, steps: int = 10):
        import ipywidgets as W

        self.app_pipe = app_pipe
        self.steps = steps
        self.upload = W.FileUpload(accept=".png,.jpg,.jpeg,image/png,image/jpeg", multiple=False,
                                   description="Upload PNG/JPEG")
        self.shape = W.Dropdown(options=SHAPES, value="circle", description="shape")
        self.colour = W.Dropdown(options=tuple(COLOURS), value="red", description="colour")
        self.position = W.Dropdown(options=POSITIONS, value="center", description="position")
        self.size_name = W.Dropdown(options=tuple(SIZES), value="large", description="size")
        self.use_preset = W.Button(description="Use this shape")
        self.prompt = W.Text(value="", placeholder="a prompt, e.g. a large red circle", description="prompt",
                             continuous_update=False)
        self.style = W.Dropdown(options=("none", *app_pipe.styles), value="none", description="style LoRA")
        self.lora_scale = W.FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, description="LoRA scale s",
                                        continuous_update=False)
        self.cond_scale = W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="λ (control)",
                                        continuous_update=False)
        self.seed = W.BoundedIntText(value=0, min=0, max=2**31 - 1, description="seed")
        self.generate_button = W.Button(description="Generate", button_style="primary")
        self.source_image = W.Image(format="png", width=192, height=192)
        self.edge_image = W.Image(format="png", width=192, height=192)
        self.output_image = W.Image(format="png", width=192, height=192)
        self.status = W.HTML()
        self.note = W.HTML(f"<b>{'' if app_pipe.trained else '⚠ '}{_escape(app_pipe.note)}</b>")
        self.source = self.condition = self.output = None
        self.message = ""
        for w, name in ((self.upload, "app-upload"), (self.source_image, "app-source"), (self.edge_image, "app-edges"),
                        (self.output_image, "app-output"), (self.cond_scale, "app-lambda"),
                        (self.lora_scale, "app-lora-scale"), (self.style, "app-style"), (self.status, "app-status"),
                        (self.note, "app-note")):
            w.add_class(name)                                                  # stable handles for the browser test

        self.upload.observe(self._on_upload, names="value")
        self.use_preset.on_click(lambda _: self._use_preset())
        self.generate_button.on_click(lambda _: self.redraw())
        for w in (self.prompt, self.style, self.lora_scale, self.cond_scale, self.seed):
            w.observe(lambda _: self.redraw(), names="value")

        def column(title, image):                                             # titles wrap within the image's width
            return W.VBox([W.HTML(f"<b>{title}</b>"), image], layout=W.Layout(width="200px"))

        self.widget = W.VBox([
            W.HTML("<h3>ControlNet app (chapter 6): edges in, a styled image out</h3>"), self.note,
            W.HBox([self.upload, W.HTML("&nbsp;or draw a preset:"), self.shape, self.colour]),
            W.HBox([self.position, self.size_name, self.use_preset]),
            W.HBox([column("source (32 × 32)", self.source_image), column("Canny edge map = condition", self.edge_image),
                    column("generated", self.output_image)]),
            self.prompt, W.HBox([self.style, self.lora_scale]), W.HBox([self.cond_scale, self.seed]),
            self.generate_button, self.status,
        ], layout=W.Layout(padding="8px"))
        self._use_preset()

    # --- the state changes -----------------------------------------------------------------------------------
    def set_source(self, image: torch.Tensor, prompt: str | None = None) -> None:
        """Use ``image`` (3, 32, 32) in [-1, 1]: show it and its edge map, then redraw."""
        self.source = image
        self.condition = edge_condition(image)                                # (1, 3, 32, 32)
        self.source_image.value = to_png((image + 1) / 2, 6)
        self.edge_image.value = to_png(self.condition[0], 6)
        if prompt is not None and prompt != self.prompt.value:
            self.prompt.value = prompt                                         # its observer redraws
        else:
            self.redraw()

    def load_upload_bytes(self, data: bytes, name: str = "upload") -> bool:
        """An uploaded file's bytes: the new source, or an error in the status line. True if used."""
        try:
            image = read_upload(data, name)
        except UploadError as err:
            self._say(str(err), error=True)
            return False
        self.set_source(image)                  # the prompt stays: the person describes what the edges outline
        return True

    def redraw(self) -> None:
        """Generate with the current controls and show the image; any failure goes to the status line."""
        if self.condition is None:
            return
        try:
            import time

            start = time.perf_counter()
            self.output = generate(self.app_pipe, self.condition, self.prompt.value, self.style.value,
                                   self.lora_scale.value, self.cond_scale.value, self.seed.value, self.steps)
            self.output_image.value = to_png(self.output, 6)
            self._say(f"generated in {time.perf_counter() - start:.1f} s: style {self.style.value}"
                      f"{'' if self.style.value == 'none' else f' (s = {self.lora_scale.value:.2f})'}, "
                      f"λ = {self.cond_scale.value:.2f}, seed {self.seed.value}, {self.steps} steps")
        except Exception as err:   # a callback must not die silently: show what went wrong
            self._say(f"generation failed: {type(err).__name__}: {err}", error=True)

    # --- callbacks ---------------------------------------------------------------------------------------------
    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        self.load_upload_bytes(bytes(f["content"]), f.get("name", "upload"))

    def _use_preset(self) -> None:
        args = (self.shape.value, self.colour.value, self.position.value, self.size_name.value)
        self.set_source(preset_image(*args), prompt=preset_caption(*args))

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        colour = "#b00020" if error else "#333"
        self.status.value = f'<span class="app-status" style="color:{colour}">{_escape(text)}</span>'


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def build_app(app_pipe: AppPipeline | None = None, steps: int = 10) -> ControlApp:
    """The app on ``app_pipe`` (default: :func:`load_app_pipeline`), showing the preset's image (book §6.2-§6.5)."""
    return ControlApp(app_pipe or load_app_pipeline(), steps)
