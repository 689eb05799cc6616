"""Condition maps computed by the course itself: Sobel and Canny-like edges, position and segmentation masks
(book §6.5, eq. 6.6 and Canny). Pure torch, no OpenCV.

Sobel estimates the image gradient with two 3x3 filters; per colour channel c::

    G_x = I_c * [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],   G_y = I_c * K_x^T,
    |G| = sqrt(sum_c G_x^2 + G_y^2),   theta = atan2(G_y, G_x)                               (eq. 6.6)

(summing over channels finds a blue square on black as well as a yellow one). The Canny-like detector
keeps a pixel only if its ``|G|`` is a local maximum across the edge (non-maximum suppression along theta,
quantised to 0/45/90/135 degrees), then applies a double threshold with hysteresis: strong pixels
(``|G| >= high``) are edges, weak ones (``low <= |G| < high``) only if connected to a strong one (Canny, §6.5).

From the shapes' drawing parameters (:func:`diffcourse.data.shapes.sample_objects`),
:func:`segmentation_map` paints each shape's class (its :data:`~diffcourse.data.shapes.SHAPES` index
+ 1, 0 = background) and :func:`position_mask` fills each shape's bounding box: conditions that
say *where* without saying *what colour*.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.shapes import SHAPES, shape_mask

__all__ = ["SOBEL_X", "sobel", "edge_map", "non_max_suppression", "hysteresis", "canny", "edge_agreement",
           "segmentation_map", "position_mask", "as_condition"]

#: The horizontal Sobel kernel K_x (eq. 6.6); the vertical one is its transpose.
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient magnitude and direction by eq. 6.6 (book §6.5).

    image (N, C, H, W) (any range; replicate padding, so the image border is not an edge) ->
    magnitude (N, 1, H, W) >= 0 and theta (N, 1, H, W) in (-pi, pi].
    """
    n, c, h, w = image.shape
    kx = SOBEL_X.to(image)                                                     # (3, 3)
    kernels = torch.stack([kx, kx.t()])[:, None]                               # (2, 1, 3, 3)
    x = F.pad(image.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")   # (N C, 1, H+2, W+2)
    g = F.conv2d(x, kernels).reshape(n, c, 2, h, w)                            # (N, C, 2, H, W)
    gx, gy = g[:, :, 0], g[:, :, 1]                                            # (N, C, H, W)
    magnitude = (gx.pow(2) + gy.pow(2)).sum(1, keepdim=True).sqrt()            # (N, 1, H, W)
    # direction of the channel with the largest gradient at each pixel
    k = (gx.pow(2) + gy.pow(2)).argmax(1, keepdim=True)                        # (N, 1, H, W)
    theta = torch.atan2(gy.gather(1, k), gx.gather(1, k))                      # (N, 1, H, W)
    return magnitude, theta


def edge_map(image: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binary Sobel edges: 1 where ``|G|`` >= ``threshold`` times the image's largest ``|G|`` (book §6.5, eq. 6.6).

    image (N, C, H, W) -> (N, 1, H, W) in {0, 1}. An image without any gradient has no edges.
    """
    magnitude, _ = sobel(image)                                                # (N, 1, H, W)
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)                         # (N, 1, 1, 1)
    return ((magnitude >= threshold * peak) & (peak > 0)).float()


def non_max_suppression(magnitude: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Keep ``|G|`` where it is at least both neighbours' across the edge, else 0 (book §6.5, Canny).

    magnitude, theta (N, 1, H, W) -> (N, 1, H, W). theta is quantised to 0, 45, 90 or 135 degrees.
    """
    m = F.pad(magnitude, (1, 1, 1, 1))                                         # (N, 1, H+2, W+2), zeros outside
    h, w = magnitude.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:                             # magnitude at (i + dy, j + dx)
        return m[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    angle = torch.rad2deg(theta) % 180                                         # (N, 1, H, W) in [0, 180)
    sector = (((angle + 22.5) // 45) % 4).long()                               # 0: x, 1: 45 deg, 2: y, 3: 135 deg
    # gradient along +x compares left/right; along +y (rows grow downwards) compares up/down
    pairs = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for s, (a, b) in enumerate(pairs):
        local_max = (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
        keep |= (sector == s) & local_max
    return magnitude * keep


def hysteresis(strong: torch.Tensor, weak: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
    """Grow the ``strong`` edges (N, 1, H, W) bool into 8-connected ``weak`` pixels until nothing changes
    (book §6.5, Canny). Returns (N, 1, H, W) float in {0, 1}."""
    edges = strong.clone()
    candidates = weak | strong
    for _ in range(iterations or strong.shape[-1] * strong.shape[-2]):
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & candidates
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def canny(image: torch.Tensor, low: float = 0.2, high: float = 0.5) -> torch.Tensor:
    """Canny-like edges (book §6.5, eq. 6.6 and Canny): Sobel, non-maximum suppression, double threshold
    (``low`` and ``high`` as fractions of the image's largest ``|G|``) and hysteresis.

    image (N, C, H, W) -> (N, 1, H, W) in {0, 1}: edges one or two pixels thin.
    """
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    magnitude, theta = sobel(image)                                            # (N, 1, H, W) each
    thin = non_max_suppression(magnitude, theta)                               # (N, 1, H, W)
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)        # (N, 1, 1, 1)
    strong = thin >= high * peak
    weak = (thin >= low * peak) & (thin > 0)
    return hysteresis(strong, weak)


def segmentation_map(objects: list[dict], size: int) -> torch.Tensor:
    """Class per pixel from the drawing parameters: 0 background, 1 + SHAPES index where a shape covers more
    than half the pixel (later shapes on top) (book §6.5). Returns (size, size) long."""
    seg = torch.zeros(size, size, dtype=torch.long)
    for ob in objects:
        m = shape_mask(ob["shape"], *ob["center"], ob["radius"], size)        # (size, size) coverage
        seg[m > 0.5] = 1 + SHAPES.index(ob["shape"])
    return seg


def position_mask(objects: list[dict], size: int) -> torch.Tensor:
    """1 inside each shape's box [cy - r, cy + r] x [cx - r, cx + r], else 0 (book §6.5). Returns (size, size)."""
    mask = torch.zeros(size, size)
    centres = torch.arange(size) + 0.5                                         # (size,) pixel centres
    for ob in objects:
        (cy, cx), r = ob["center"], ob["radius"]
        rows = (centres - cy).abs() <= r                                       # (size,)
        cols = (centres - cx).abs() <= r
        mask[rows[:, None] & cols[None, :]] = 1.0
    return mask


def as_condition(maps: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """A map (N, H, W) or (N, 1, H, W) in [0, 1] (or class ids) as a ControlNet condition (N, channels, H, W)
    in [0, 1], the range diffusers' ControlNet pipeline feeds (book §6.5). Class ids are divided by
    ``len(SHAPES)``."""
    x = maps.float()
    if x.ndim == 3:
        x = x[:, None]                                                         # (N, 1, H, W)
    if x.max() > 1:
        x = x / len(SHAPES)
    return x.expand(-1, channels, -1, -1).contiguous()                         # (N, channels, H, W)


def edge_agreement(condition: torch.Tensor, images: torch.Tensor, tolerance: int = 1, low: float = 0.2,
                   high: float = 0.5) -> dict[str, torch.Tensor]:
    """How well generated images follow an edge condition (book §6.5, the conditioning-scale sweep).

    condition (N, 1 or C, H, W) edges in {0, 1} (channel 0 is read); images (N, 3, H, W) in [-1, 1], whose
    Canny edges are compared with a tolerance of ``tolerance`` pixels (a (2 tol + 1)^2 square):
    precision = share of the images' edge pixels near a condition edge, recall = share of the condition's edge
    pixels near an image edge, f1 their harmonic mean. Each (N,); an image without edges scores 0.
    """
    want = condition[:, :1].float() > 0.5                                     # (N, 1, H, W)
    got = canny(images, low, high) > 0.5                                       # (N, 1, H, W)
    k = 2 * tolerance + 1

    def near(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x.float(), k, stride=1, padding=tolerance) > 0

    def share(a: torch.Tensor, b_near: torch.Tensor) -> torch.Tensor:
        hits = (a & b_near).flatten(1).sum(1).float()                          # (N,)
        return hits / a.flatten(1).sum(1).clamp_min(1).float()

    precision, recall = share(got, near(want)), share(want, near(got))
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}
