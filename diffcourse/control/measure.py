"""Measuring a ControlNet: does the image follow the condition's edges, or its boxes? (book §6.5, eq. 6.5)

Every number here runs diffusers' own ``StableDiffusionControlNetPipeline`` (from the zoo folders
``shapes_sd`` and ``shapes_controlnet``: :func:`~diffcourse.control.controlnet.load_controlnet_pipeline`), or the
course's loop (:func:`~diffcourse.control.controlnet.sample_controlled`, ``loop="course"``), which draws the
same images to 1e-4. The score is :func:`~diffcourse.control.edges.edge_agreement`: the F1 between the
condition's edge pixels and the Canny edges of the generated image, within one pixel.

* :func:`edge_f1_table` -- §6.5, the conditioning-scale sweep: F1 per ``controlnet_conditioning_scale``
  lambda (eq. 6.5), the same prompts and seed at every lambda, and the fair baseline: the same prompts
  *without* the ControlNet (the plain ``StableDiffusionPipeline`` of the same parts).
* :func:`box_agreement` and :func:`box_table` -- §6.5, the position-box ControlNet: is the drawn shape's centre
  in its box, and how much of the box does it cover (IoU)?
* :func:`degrade` and :func:`weak_condition_table` -- §6.5, the trap "ControlNet cannot rescue a weak
  condition": spurious edge pixels, dropped edge pixels or a cropped map; the image is scored against the
  *clean* edges it should have had, and against the map it was given.

Typical book call (a few seconds on a CPU)::

    from diffcourse.control.measure import held_out_conditions, edge_f1_table, weak_condition_table
    from diffcourse.control.controlnet import load_controlnet_pipeline
    pipe = load_controlnet_pipeline()                           # zoo shapes_sd + shapes_controlnet
    captions, conditions = held_out_conditions(8)
    rows = edge_f1_table(pipe, [""] * 8, conditions)            # F1 per scale, and the baseline (scale None)
"""
from __future__ import annotations

import torch

from .edges import edge_agreement

__all__ = ["EVAL_SEED", "SCALES", "DEGRADATIONS", "held_out_conditions", "plain_pipeline", "generate",
           "edge_f1_table", "box_agreement", "box_table", "degrade", "weak_condition_table"]

#: The seed of the held-out shapes (training draws with seed 0): conditions the ControlNet never saw.
EVAL_SEED = 1000

#: The conditioning scales lambda of the book's sweep (eq. 6.5).
SCALES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)

#: The weak conditions of §6.5's trap and the amounts the book measures (:func:`degrade`).
DEGRADATIONS = {"noise": (0.0, 0.05, 0.15, 0.3), "drop": (0.0, 0.5, 0.8, 0.95), "crop": (0.0, 0.25, 0.5, 0.75)}


def held_out_conditions(n: int = 8, seed: int = EVAL_SEED, condition: str = "canny") -> tuple[list[str], torch.Tensor]:
    """``n`` shapes the ControlNet was not trained on: their captions and conditions (n, 3, 32, 32) in [0, 1] of
    kind ``condition`` (Canny edges by default, or a segmentation / position map) (book §6.5)."""
    from .train_controlnet import control_dataset

    _, captions, conditions = control_dataset(n, condition, seed=seed)
    return captions, conditions


def plain_pipeline(control_pipe):
    """The ``StableDiffusionPipeline`` of the same VAE, text encoder, U-Net and scheduler, without the ControlNet:
    the baseline of §6.5's sweep."""
    from diffusers import StableDiffusionPipeline

    parts = {k: v for k, v in control_pipe.components.items() if k != "controlnet"}
    parts.update(safety_checker=None, feature_extractor=None)
    pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(control_pipe, prompts: list[str], conditions: torch.Tensor | None, scale: float | None = 1.0,
             seed: int = 0, num_inference_steps: int = 10, guidance_scale: float = 4.0,
             loop: str = "pipeline") -> torch.Tensor:
    """Images (N, 3, 32, 32) in [-1, 1] for ``prompts`` with the edge ``conditions`` (N, 3, 32, 32) in [0, 1] at
    conditioning scale ``scale`` (eq. 6.5) (book §6.5).

    ``scale=None``: the same prompts and seed without the ControlNet (:func:`plain_pipeline`).
    ``loop``: "pipeline" (diffusers' ``StableDiffusionControlNetPipeline``) or "course"
    (:func:`~diffcourse.control.controlnet.sample_controlled`, the same steps written out).
    """
    if loop not in ("pipeline", "course"):
        raise ValueError(f"loop must be 'pipeline' or 'course', got {loop!r}")
    if loop == "course":
        from .controlnet import sample_controlled

        net = None if scale is None else control_pipe.controlnet
        return sample_controlled(control_pipe, list(prompts), conditions, net, seed=seed,
                                 num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 conditioning_scale=0.0 if scale is None else scale)
    call = dict(generator=torch.Generator().manual_seed(seed), num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, output_type="pt")
    if scale is None:
        images = plain_pipeline(control_pipe)(list(prompts), **call).images     # (N, 3, H, W) in [0, 1]
    else:
        images = control_pipe(list(prompts), image=conditions, controlnet_conditioning_scale=float(scale),
                              **call).images
    return images * 2 - 1


def _score(condition: torch.Tensor, images: torch.Tensor, tolerance: int) -> dict:
    s = edge_agreement(condition, images, tolerance)
    return {k: float(v.mean()) for k, v in s.items()}


def box_agreement(condition: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """How well generated images follow a position-box condition (book §6.5): per image (N,), ``inside`` = 1 if
    the drawn shape's centre (the coverage-weighted centroid of the pixels whose brightest channel is above 1/2,
    as chapter 4's checker finds it) lies in the box, and ``iou`` of those pixels with the box.

    ``condition`` (N, C, H, W) in {0, 1} (the box in every channel), ``images`` (N, 3, H, W) in [-1, 1].
    An image with no bright pixel scores 0 on both.
    """
    box = condition[:, 0] > 0.5                                                # (N, H, W)
    cover = ((images.float().cpu() + 1) / 2).clamp(0, 1).amax(1) > 0.5        # (N, H, W)
    inter = (box & cover).flatten(1).sum(1).float()
    union = (box | cover).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
    size = images.shape[-1]
    ys = torch.arange(size, dtype=torch.float32)
    w = cover.float()                                                          # (N, H, W)
    mass = w.flatten(1).sum(1)                                                 # (N,)
    cy = ((w.sum(2) * ys).sum(1) / mass.clamp(min=1)).round().long().clamp(0, size - 1)
    cx = ((w.sum(1) * ys).sum(1) / mass.clamp(min=1)).round().long().clamp(0, size - 1)
    inside = box[torch.arange(len(box)), cy, cx] & (mass > 0)
    return {"inside": inside.float(), "iou": iou}


def box_table(control_pipe, prompts: list[str], conditions: torch.Tensor, scales=(0.0, 1.0), baseline: bool = True,
              seed: int = 0, num_inference_steps: int = 10, guidance_scale: float = 4.0) -> list[dict]:
    """:func:`box_agreement` against the conditioning scale lambda (book §6.5, eq. 6.5), like :func:`edge_f1_table`:
    one row per scale (``scale``, mean ``inside`` and ``iou``), then the same prompts and seed without the
    ControlNet (``scale=None``)."""
    rows = []
    for scale in (*scales, *([None] if baseline else [])):
        images = generate(control_pipe, prompts, conditions, scale, seed, num_inference_steps, guidance_scale)
        rows.append(dict(scale=scale, **{k: float(v.mean()) for k, v in box_agreement(conditions, images).items()}))
    return rows


def edge_f1_table(control_pipe, prompts: list[str], conditions: torch.Tensor, scales=SCALES, baseline: bool = True,
                  seed: int = 0, num_inference_steps: int = 10, guidance_scale: float = 4.0, tolerance: int = 1,
                  loop: str = "pipeline", keep_images: bool = False) -> list[dict]:
    """Edge agreement against the conditioning scale lambda (book §6.5, eq. 6.5): one row per scale, then (with
    ``baseline``) a row ``scale=None`` for the same prompts and seed without the ControlNet.

    conditions (N, 3, 32, 32) edges in {0, 1}; each row: ``scale``, mean ``precision``, ``recall`` and ``f1`` of
    :func:`~diffcourse.control.edges.edge_agreement` (tolerance in pixels), and ``images`` (N, 3, 32, 32) in
    [-1, 1] if ``keep_images``. Cost: one pipeline call of N images per row.
    """
    rows = []
    for scale in (*scales, *([None] if baseline else [])):
        images = generate(control_pipe, prompts, conditions, scale, seed, num_inference_steps, guidance_scale, loop)
        row = dict(scale=scale, **_score(conditions, images, tolerance))
        if keep_images:
            row["images"] = images
        rows.append(row)
    return rows


def degrade(conditions: torch.Tensor, kind: str, amount: float, seed: int = 0) -> torch.Tensor:
    """A weak copy of edge ``conditions`` (N, C, H, W) in {0, 1} (book §6.5, the trap). Returns the same shape.

    ``kind``: "noise" turns each background pixel into a spurious edge with probability ``amount``; "drop"
    erases each edge pixel with probability ``amount`` (a partial, dotted outline); "crop" erases the
    rightmost ``amount`` of the columns (the map covers only part of the image). ``amount=0``: unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = conditions.shape
    edges = conditions[:, :1] > 0.5                                             # (N, 1, H, W) bool
    if kind == "noise":
        flips = torch.rand(n, 1, h, w, generator=g) < amount
        out = edges | flips
    elif kind == "drop":
        keep = torch.rand(n, 1, h, w, generator=g) >= amount
        out = edges & keep
    elif kind == "crop":
        cols = torch.arange(w) < round((1 - amount) * w)                        # (W,) columns kept
        out = edges & cols[None, None, None, :]
    else:
        raise ValueError(f"kind must be one of {sorted(DEGRADATIONS)}, got {kind!r}")
    return out.float().expand_as(conditions).contiguous()                       # (N, C, H, W)


def weak_condition_table(control_pipe, prompts: list[str], conditions: torch.Tensor, degradations=None,
                         scale: float = 1.0, seed: int = 0, num_inference_steps: int = 10, guidance_scale: float = 4.0,
                         tolerance: int = 1, loop: str = "pipeline", keep_images: bool = False) -> list[dict]:
    """The trap "ControlNet cannot rescue a weak condition", measured (book §6.5).

    For each ``kind`` and ``amount`` of ``degradations`` (default :data:`DEGRADATIONS`), the images drawn from
    the weak map at conditioning scale ``scale``; each row: ``kind``, ``amount``, ``f1_clean`` (F1 against the
    clean edges the image should have followed), ``f1_given`` (against the weak map it was given) and, with
    ``keep_images``, ``images`` and ``condition``. Amount 0 of each kind is the clean condition itself.
    Cost: one pipeline call of N images per row.
    """
    rows = []
    for kind, amounts in (degradations or DEGRADATIONS).items():
        for amount in amounts:
            weak = degrade(conditions, kind, amount, seed)
            images = generate(control_pipe, prompts, weak, scale, seed, num_inference_steps, guidance_scale, loop)
            row = dict(kind=kind, amount=float(amount), f1_clean=_score(conditions, images, tolerance)["f1"],
                       f1_given=_score(weak, images, tolerance)["f1"])
            if keep_images:
                row.update(images=images, condition=weak)
            rows.append(row)
    return rows
