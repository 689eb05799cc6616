"""Procedurally drawn coloured shapes with captions, for text conditioning (book §5, guidance).

Each image (3, H, W) in [-1, 1] shows one or two shapes on a black background, each shape in its
own cell of a 3x3 grid (so shapes never overlap), with a caption such as
``"a small red circle at the top left and a large blue square in the center"``.
Everything is rasterised here with torch (anti-aliased by supersampling), nothing is downloaded,
and image ``i`` of a dataset depends only on ``(seed, i)``: the same on every run and in any order.

Attributes come as words (``objects(i)``: a list of dicts) and as integer ids
(``item["attributes"]``: (max_shapes, 4) long rows ``[shape, colour, size, position]``, -1 for an
absent shape), and captions as token ids over :data:`VOCAB` (``tokenize``).

Styles (book §4.2, the data the VAE must give back): ``style="plain"`` (the default, unchanged) paints
flat shapes on black. ``style="varied"`` adds a background (black, a dark solid colour, a gradient or
a noise texture) and a texture on each shape (flat, stripes or a shading), drawn from a second
generator of (seed, index), so the shapes, captions and attributes of item i are the same in both
styles. Later chapters' LoRA styles rely on the decoder having seen these.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "POSITIONS", "POSITION_PHRASES", "VOCAB",
    "shape_mask", "render_objects", "caption_for", "sample_objects", "tokenize",
    "make_shapes", "ShapesDataset", "STYLES", "BACKGROUNDS", "TEXTURES", "draw_style", "render_styled",
]

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {                                         # RGB in [0, 1]; drawn as 2 c - 1
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0),
}
SIZES = {"small": 0.08, "large": 0.14}              # half-extent r as a fraction of the image size
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")   # cell p is (row p // 3, column p % 3)
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
VOCAB = ("<pad>", "<unk>", "a", "and", "at", "on", "in", "the", "moving", "up", "down",
         "top", "bottom", "left", "right", "center", *SIZES, *COLOURS, *SHAPES)
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}
STYLES = ("plain", "varied")
BACKGROUNDS = ("black", "solid", "gradient", "noise")
TEXTURES = ("flat", "stripes", "shading")


# ----------------------------------------------------------------------------- rasterisation

def shape_mask(shape: str, cy: float, cx: float, r: float, size: int, antialias: int = 4,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Coverage in [0, 1] of a shape centred at (cy, cx) pixels with half-extent r (book §5).

    Pixel (i, j) covers [i, i+1] x [j, j+1]; coverage is the fraction of ``antialias``^2 sub-pixel
    centres inside the shape. Every shape lies in the box [cy - r, cy + r] x [cx - r, cx + r]:
    circle of radius r, square of half side 0.85 r, diamond ``|dx| + |dy| <= r``, upward equilateral
    triangle with circumradius r. Returns (size, size) float32.
    """
    n = size * antialias
    c = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / antialias   # (n,) sub-pixel centres
    dy, dx = c[:, None] - cy, c[None, :] - cx                                 # (n, 1), (1, n)
    if shape == "circle":
        inside = dy**2 + dx**2 <= r**2
    elif shape == "square":
        inside = (dy.abs() <= 0.85 * r) & (dx.abs() <= 0.85 * r)
    elif shape == "diamond":
        inside = dy.abs() + dx.abs() <= r
    elif shape == "triangle":                      # apex up (y grows downwards), base at dy = r / 2
        h = math.sqrt(3) / 2
        inside = (dy <= r / 2) & (dx.abs() * 1.5 / h <= dy + r)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    inside = inside.to(torch.float32).expand(n, n)                            # (n, n)
    return F.avg_pool2d(inside[None, None], antialias)[0, 0]                  # (size, size)


def render_objects(objects: list[dict], size: int, antialias: int = 4) -> torch.Tensor:
    """Paint objects (dicts with shape, colour, center=(cy, cx), radius) on black (book §5).

    Later objects are painted over earlier ones. Returns (3, size, size) float32 in [-1, 1].
    """
    img = torch.zeros(3, size, size)                                          # (3, H, W) in [0, 1]
    for ob in objects:
        m = shape_mask(ob["shape"], *ob["center"], ob["radius"], size, antialias)   # (H, W)
        colour = torch.tensor(COLOURS[ob["colour"]])[:, None, None]           # (3, 1, 1)
        img = img * (1 - m) + colour * m
    return img * 2 - 1


def draw_style(generator: torch.Generator, count: int) -> dict:
    """A random background and one texture per shape for ``style="varied"`` (book §4.2).

    Returns ``dict(background=name, bg_colour=(3,) in [0, 0.35], bg_colour2=(3,), noise_seed=int,
    textures=[name, ...] (count), angles=[float, ...] (count))``. Backgrounds stay dark (every channel
    at most 0.35) so the shapes, whose brightest channel is 1, stand out from them.
    """
    background = BACKGROUNDS[int(torch.randint(len(BACKGROUNDS), (), generator=generator))]
    bg = torch.rand(2, 3, generator=generator) * 0.35                         # (2, 3) two dark colours
    noise_seed = int(torch.randint(2**31 - 1, (), generator=generator))
    textures = [TEXTURES[int(torch.randint(len(TEXTURES), (), generator=generator))] for _ in range(count)]
    angles = (torch.rand(count, generator=generator) * math.pi).tolist()
    return dict(background=background, bg_colour=bg[0].tolist(), bg_colour2=bg[1].tolist(),
                noise_seed=noise_seed, textures=textures, angles=angles)


def _background(style: dict, size: int) -> torch.Tensor:
    """The (3, size, size) background in [0, 1] that ``style`` describes (book §4.2)."""
    c1, c2 = torch.tensor(style["bg_colour"])[:, None, None], torch.tensor(style["bg_colour2"])[:, None, None]
    kind = style["background"]
    if kind == "black":
        return torch.zeros(3, size, size)
    if kind == "solid":
        return c1.expand(3, size, size).clone()
    if kind == "gradient":                                                    # top c1 -> bottom c2
        w = torch.linspace(0, 1, size)[None, :, None]                         # (1, H, 1)
        return (c1 * (1 - w) + c2 * w).expand(3, size, size).clone()
    if kind == "noise":                                                       # blurred noise between c1 and c2
        g = torch.Generator().manual_seed(style["noise_seed"])
        n = torch.rand(1, 1, size // 4 + 1, size // 4 + 1, generator=g)
        n = F.interpolate(n, size=(size, size), mode="bilinear", align_corners=True)[0]   # (1, H, W)
        return c1 * (1 - n) + c2 * n
    raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")


def _texture(kind: str, angle: float, ob: dict, size: int) -> torch.Tensor:
    """Brightness (size, size) in [0.55, 1] that multiplies a shape's colour (book §4.2)."""
    if kind == "flat":
        return torch.ones(size, size)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    if kind == "stripes":                                                     # period 3 px along `angle`
        u = yy * math.sin(angle) + xx * math.cos(angle)
        return 0.775 + 0.225 * torch.cos(2 * math.pi * u / 3)
    if kind == "shading":                                                     # lit from the top left
        cy, cx = ob["center"]
        d = ((yy - cy + ob["radius"]) ** 2 + (xx - cx + ob["radius"]) ** 2).sqrt() / (2.5 * ob["radius"])
        return 1 - 0.45 * d.clamp(0, 1)
    raise ValueError(f"unknown texture {kind!r}; choose one of {TEXTURES}")


def render_styled(objects: list[dict], style: dict, size: int, antialias: int = 4) -> torch.Tensor:
    """Paint objects over the background of ``style``, each with its texture (book §4.2).

    ``style`` comes from :func:`draw_style`. Returns (3, size, size) float32 in [-1, 1].
    """
    img = _background(style, size)                                            # (3, H, W) in [0, 1]
    for ob, kind, angle in zip(objects, style["textures"], style["angles"]):
        m = shape_mask(ob["shape"], *ob["center"], ob["radius"], size, antialias)   # (H, W)
        colour = torch.tensor(COLOURS[ob["colour"]])[:, None, None] * _texture(kind, angle, ob, size)
        img = img * (1 - m) + colour * m
    return img * 2 - 1


# ----------------------------------------------------------------------------- attributes and captions

def sample_objects(generator: torch.Generator, size: int = 32, max_shapes: int = 2) -> list[dict]:
    """Draw 1..max_shapes objects in distinct grid cells, sorted in reading order (book §5).

    Each dict: shape, colour, size ("small"/"large"), position (a :data:`POSITIONS` name),
    center (cy, cx) in pixels (the cell centre plus a jitter that keeps the shape in its cell,
    0.5 px from its border) and radius in pixels.
    """
    if not 1 <= max_shapes <= 9:
        raise ValueError(f"max_shapes must be between 1 and 9, got {max_shapes}")
    count = 1 + int(torch.randint(max_shapes, (), generator=generator))
    cells = sorted(torch.randperm(9, generator=generator)[:count].tolist())
    cell = size / 3
    objects = []
    for p in cells:
        shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))]
        colour = list(COLOURS)[int(torch.randint(len(COLOURS), (), generator=generator))]
        size_name = list(SIZES)[int(torch.randint(len(SIZES), (), generator=generator))]
        r = SIZES[size_name] * size
        slack = max(cell / 2 - r - 0.5, 0.0)
        jy, jx = ((torch.rand(2, generator=generator) * 2 - 1) * slack).tolist()
        center = ((p // 3 + 0.5) * cell + jy, (p % 3 + 0.5) * cell + jx)
        objects.append(dict(shape=shape, colour=colour, size=size_name, position=POSITIONS[p],
                            center=center, radius=r))
    return objects


def caption_for(objects: list[dict]) -> str:
    """"a small red circle at the top left and a large blue square in the center" (book §5)."""
    return " and ".join(f"a {o['size']} {o['colour']} {o['shape']} {POSITION_PHRASES[o['position']]}"
                        for o in objects)


def tokenize(caption: str, max_len: int = 20) -> torch.Tensor:
    """Word ids over :data:`VOCAB`, padded with 0 (``<pad>``) to (max_len,) long (book §5).

    Unknown words map to 1 (``<unk>``); a caption longer than ``max_len`` words is an error.
    """
    words = caption.lower().split()
    if len(words) > max_len:
        raise ValueError(f"caption has {len(words)} words, more than max_len={max_len}: {caption!r}")
    ids = torch.zeros(max_len, dtype=torch.long)
    ids[: len(words)] = torch.tensor([_WORD_ID.get(w, 1) for w in words], dtype=torch.long)
    return ids


def _attribute_ids(objects: list[dict], max_shapes: int) -> torch.Tensor:
    ids = torch.full((max_shapes, 4), -1, dtype=torch.long)                   # (max_shapes, 4)
    for i, o in enumerate(objects):
        ids[i] = torch.tensor([SHAPES.index(o["shape"]), list(COLOURS).index(o["colour"]),
                               list(SIZES).index(o["size"]), POSITIONS.index(o["position"])])
    return ids


def _item_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, index), so items can be drawn in any order (``salt``:
    another stream for the same item, e.g. its style)."""
    return torch.Generator().manual_seed((int(seed) * 2_654_435_761 + int(index) + salt * 7_919) % (2**63 - 1))


# ----------------------------------------------------------------------------- datasets

def make_shapes(n: int, seed: int = 0, size: int = 32, max_shapes: int = 2, antialias: int = 4,
                style: str = "plain"):
    """``n`` images (n, 3, size, size) in [-1, 1], their captions and their object lists (book §5).

    Identical to items 0..n-1 of ``ShapesDataset(n, seed, size, max_shapes, antialias, style=style)``.
    """
    ds = ShapesDataset(n, seed=seed, size=size, max_shapes=max_shapes, antialias=antialias, style=style)
    items = [ds[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items]) if n else torch.zeros(0, 3, size, size)
    return images, [it["caption"] for it in items], [ds.objects(i) for i in range(n)]


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` procedurally drawn captioned shape images, item i determined by (seed, i) (book §5).

    An item is a dict: ``image`` (3, size, size) float32 in [-1, 1], ``caption`` (str), ``tokens``
    (max_len,) long, ``attributes`` (max_shapes, 4) long ``[shape, colour, size, position]`` ids
    (-1 rows for absent shapes). Works with the default DataLoader collate. ``style``: "plain" (flat
    shapes on black) or "varied" (backgrounds and textures, book §4.2; same shapes and captions).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, max_shapes: int = 2,
                 antialias: int = 4, max_len: int = 20, style: str = "plain"):
        if size < 12:
            raise ValueError(f"size must be at least 12 pixels, got {size}")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
        self.style = style
        self.n, self.seed, self.size, self.max_shapes = n, seed, size, max_shapes
        self.antialias, self.max_len = antialias, max_len

    def __len__(self) -> int:
        return self.n

    def objects(self, index: int) -> list[dict]:
        """The attribute dicts of item ``index`` (shape, colour, size, position, center, radius) (book §5)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} images")
        return sample_objects(_item_generator(self.seed, index), self.size, self.max_shapes)

    def __getitem__(self, index: int) -> dict:
        objects = self.objects(index)
        caption = caption_for(objects)
        if self.style == "plain":
            image = render_objects(objects, self.size, self.antialias)
        else:
            style = draw_style(_item_generator(self.seed, index, salt=1), len(objects))
            image = render_styled(objects, style, self.size, self.antialias)
        return dict(image=image, caption=caption,
                    tokens=tokenize(caption, self.max_len),
                    attributes=_attribute_ids(objects, self.max_shapes))
