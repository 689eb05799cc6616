"""Tests of the course's data modules (diffcourse/data/): toys, digits, shapes, video, the MNIST reader."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from diffcourse.data import (MovingShapesDataset, ShapesDataset, TOYS, VOCAB, digits_split_indices, load_digits,
                             load_mnist, make_moving_shapes, make_shapes, read_idx, sample_toy, tokenize)
from diffcourse.data.shapes import COLOURS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES
from diffcourse.data.shapes import shape_mask
from diffcourse.data.video import bounce, direction_phrase


# the colour words' meaning, written out independently of diffcourse.data.shapes.COLOURS
RGB = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "magenta": (1, 0, 1),
       "cyan": (0, 1, 1)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- toys (§1.1, §2.1)

@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_shape_scale_and_seeding(name):
    x = sample_toy(name, 5000, _gen(0))
    assert x.shape == (5000, 2) and x.dtype == torch.float32, f"{name}: got {tuple(x.shape)} {x.dtype}, want (5000, 2) float32"
    assert torch.isfinite(x).all()
    mean, std = x.mean(0), x.std(0)
    assert mean.abs().max() < 0.15, f"{name} should be roughly zero-mean, mean = {mean.tolist()}"
    assert ((std > 0.5) & (std < 1.5)).all(), f"{name} should be roughly unit-scale, std = {std.tolist()}"
    assert torch.equal(x, sample_toy(name, 5000, _gen(0))), f"{name}: the same seed must give the same points"
    assert not torch.equal(x, sample_toy(name, 5000, _gen(1))), f"{name}: different seeds gave the same points"


def test_toy_geometry():
    cb = sample_toy("checkerboard", 4000, _gen(2))
    assert cb.abs().max() <= 2, "checkerboard points should lie in [-2, 2]^2"
    parity = (cb.floor().long().sum(1)) % 2
    assert (parity == 0).all(), f"{int((parity != 0).sum())} checkerboard points lie on white squares"
    g8 = sample_toy("eight_gaussians", 4000, _gen(3))
    radius = g8.norm(dim=1)
    assert (radius - 1.4).abs().mean() < 0.12, f"eight Gaussians should sit on the circle of radius 1.4, mean |r - 1.4| = {(radius - 1.4).abs().mean():.3f}"
    with pytest.raises(ValueError, match="unknown toy"):
        sample_toy("spiral galaxy", 10, _gen(0))


# ----------------------------------------------------------------------------- digits (§3)

def test_digits_shapes_ranges_and_labels():
    x8, y8 = load_digits("all")
    assert x8.shape == (1797, 1, 8, 8) and x8.dtype == torch.float32 and y8.dtype == torch.long
    assert x8.min() == -1 and x8.max() == 1, f"digits should span [-1, 1], got [{x8.min()}, {x8.max()}]"
    assert set(y8.tolist()) == set(range(10))
    x16, y16 = load_digits("train", size=16)
    assert x16.shape[1:] == (1, 16, 16) and x16.min() >= -1 and x16.max() <= 1
    x8_train, _ = load_digits("train")
    diff = (x16.mean((2, 3)) - x8_train.mean((2, 3))).abs().max().item()
    assert diff < 0.05, f"resizing to 16x16 should keep each image's mean brightness; max change {diff:.3f}"
    with pytest.raises(ValueError, match="unknown split"):
        load_digits("validation")
    with pytest.raises(ValueError, match="size"):
        load_digits("train", size=4)


def test_digits_split_is_fixed_disjoint_and_stratified():
    train_idx, held_idx = digits_split_indices()
    assert set(train_idx.tolist()).isdisjoint(held_idx.tolist()), "train and held-out parts overlap"
    assert len(train_idx) + len(held_idx) == 1797 and len(set(train_idx.tolist()) | set(held_idx.tolist())) == 1797
    assert (len(train_idx), len(held_idx)) == (1442, 355), \
        f"the documented split has 1442 train / 355 held-out images, got {len(train_idx)} / {len(held_idx)}"
    _, y = load_digits("all")
    for c in range(10):
        n_c, h_c = int((y == c).sum()), int((y[held_idx] == c).sum())
        assert h_c == n_c // 5, f"class {c}: {h_c} held out of {n_c}, expected every 5th ({n_c // 5})"
    again = digits_split_indices()
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], held_idx), "the split must be deterministic"
    x_all, _ = load_digits("all")
    x_held, y_held = load_digits("heldout")
    assert torch.equal(x_held, x_all[held_idx]) and torch.equal(y_held, y[held_idx])


# ----------------------------------------------------------------------------- shapes (§5)

def _coverage(img):
    """Per-pixel ink in [0, 1] of a (3, H, W) image in [-1, 1] on black (every colour has a channel at 1)."""
    return ((img + 1) / 2).amax(0)                                            # (H, W)


def _classify(mask):
    """Name a shape from a boolean (H, W) mask by fill ratio of its bounding box and its widest row."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    box = mask[r0:r1 + 1, c0:c1 + 1]
    fill = box.float().mean().item()
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    widest = int(box.sum(1).argmax())
    return "triangle" if widest > 0.75 * (box.shape[0] - 1) else "diamond"


def _cell_slices(position, size):
    p = POSITIONS.index(position)
    r, c, cell = p // 3, p % 3, size / 3
    return (slice(round(r * cell), round((r + 1) * cell)), slice(round(c * cell), round((c + 1) * cell)))


def test_shapes_dataset_items_and_determinism():
    ds = ShapesDataset(16, seed=3)
    item = ds[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["tokens"].shape == (20,) and item["attributes"].shape == (2, 4)
    assert torch.equal(ShapesDataset(16, seed=3)[5]["image"], item["image"]), "same (seed, index) must give the same image"
    _ = [ds[i] for i in range(16)]
    assert torch.equal(ds[5]["image"], item["image"]), "an item must not depend on which items were drawn before"
    imgs_a, caps_a, _ = make_shapes(16, seed=3)
    imgs_b, caps_b, _ = make_shapes(16, seed=4)
    assert torch.equal(imgs_a[5], item["image"]) and caps_a[5] == item["caption"]
    assert not torch.equal(imgs_a, imgs_b) and caps_a != caps_b, "different seeds should give different images"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4


def test_captions_and_attributes_match_the_pixels():
    """Check, from the pixels alone, the colour, shape, size and position that each caption names."""
    size = 96
    ds = ShapesDataset(40, seed=11, size=size)
    counts = {s: 0 for s in SHAPES}
    for i in range(len(ds)):
        item, objects = ds[i], ds.objects(i)
        img, ink = item["image"], _coverage(item["image"])
        expected = " and ".join(f"a {o['size']} {o['colour']} {o['shape']} {POSITION_PHRASES[o['position']]}"
                                for o in objects)
        assert item["caption"] == expected, f"image {i}: caption {item['caption']!r}, attributes say {expected!r}"
        lit_total = int((ink > 0.5).sum())
        lit_in_cells = 0
        for k, o in enumerate(objects):
            words = f"{o['size']} {o['colour']} {o['shape']}"
            assert words in item["caption"], f"image {i}: caption {item['caption']!r} lacks {words!r}"
            ys, xs = _cell_slices(o["position"], size)
            mask = ink[ys, xs] > 0.5
            lit_in_cells += int(mask.sum())
            assert mask.any(), f"image {i}: nothing drawn in the cell {o['position']!r} the caption names"
            full = ink[ys, xs] > 0.999
            colour = img[:, ys, xs][:, full].mean(1)                           # (3,)
            want = torch.tensor(RGB[o["colour"]], dtype=torch.float32) * 2 - 1
            assert torch.allclose(colour, want, atol=1e-5), \
                f"image {i}: caption says {o['colour']} ({want.tolist()}), pixels are {colour.tolist()}"
            seen = _classify(mask)
            assert seen == o["shape"], f"image {i}: caption says {o['shape']}, the pixels look like a {seen}"
            extent = (mask.any(0).sum().item()) / size                        # bounding-box width / image size
            seen_size = "large" if extent > (SIZES["small"] + SIZES["large"]) else "small"
            assert seen_size == o["size"], f"image {i}: caption says {o['size']}, drawn width is {extent:.3f} of the image"
            assert torch.equal(item["attributes"][k], torch.tensor([
                SHAPES.index(o["shape"]), list(COLOURS).index(o["colour"]), list(SIZES).index(o["size"]),
                POSITIONS.index(o["position"])]))
            counts[o["shape"]] += 1
        assert lit_in_cells == lit_total, f"image {i}: {lit_total - lit_in_cells} lit pixels outside the named cells"
    assert min(counts.values()) > 0, f"every shape should appear among 40 images, counts {counts}"
    assert set(COLOURS) == set(RGB), f"colour words changed: {sorted(COLOURS)}; update RGB in this test"


def test_tokenize_round_trips_captions():
    _, captions, _ = make_shapes(20, seed=5)
    for cap in captions:
        ids = tokenize(cap)
        words = [VOCAB[i] for i in ids.tolist() if i != 0]
        assert " ".join(words) == cap and 1 not in ids.tolist(), f"caption {cap!r} has words outside VOCAB"
    assert tokenize("a purple blob")[2].item() == 1, "unknown words should map to <unk> (1)"


# ----------------------------------------------------------------------------- video (§8)

def test_bounce_folds_into_the_interval():
    p = torch.linspace(-50, 80, 2001, dtype=torch.float64)
    b = bounce(p, 3.0, 10.0)
    assert b.min() >= 3.0 and b.max() <= 10.0
    assert torch.equal(bounce(torch.tensor([3.0, 6.5, 10.0]), 3.0, 10.0), torch.tensor([3.0, 6.5, 10.0]))
    assert (b.diff().abs() <= p.diff().abs() + 1e-12).all(), "bouncing must move at the same speed, never jump"


def test_moving_shapes_clips():
    clips, captions, motions = make_moving_shapes(6, seed=2, num_frames=40)
    assert clips.shape == (6, 40, 3, 32, 32) and clips.dtype == torch.float32
    assert clips.min() >= -1 and clips.max() <= 1
    again, _, _ = make_moving_shapes(6, seed=2, num_frames=8)
    other, _, _ = make_moving_shapes(6, seed=3, num_frames=8)
    assert torch.equal(clips[:, :8], again), "same seed: the same clips (a shorter clip is a prefix of a longer one)"
    assert not torch.equal(again, other), "different seeds should give different clips"
    assert len(MovingShapesDataset(6, seed=2, num_frames=40)[0]["tokens"]) == 12
    flips = 0
    for clip, cap, m in zip(clips, captions, motions):
        ink = torch.stack([_coverage(f) for f in clip])                       # (F, H, W)
        total = ink.sum((1, 2))                                               # (F,)
        for f in range(0, 40, 3):                                             # nothing cut off by the frame:
            cy, cx = m["centres"][f].tolist()                                 # same ink as on a padded canvas
            padded = shape_mask(m["shape"], cy + 8, cx + 8, m["radius"], 48).sum()
            assert abs(float(total[f] - padded)) < 1e-3, \
                f"{cap!r}, frame {f}: {float(padded - total[f]):.2f} px of the shape lie outside the frame"
        ys = torch.arange(32, dtype=torch.float32) + 0.5
        cy = (ink.sum(2) * ys).sum(1) / total                                 # (F,)
        cx = (ink.sum(1) * ys).sum(1) / total                                 # (F,)
        centres = m["centres"].float()                                        # (F, 2)
        assert (centres >= m["radius"] - 1e-6).all() and (centres <= 32 - m["radius"] + 1e-6).all()
        err = (torch.stack([cy, cx], 1) - centres).abs().max().item()
        assert err < 0.3, f"{cap!r}: drawn centre is {err:.2f} px from the motion's centre"
        d = torch.stack([cy, cx], 1).diff(dim=0)                              # (F-1, 2)
        assert direction_phrase(float(d[0, 0]), float(d[0, 1])) == m["direction"], \
            f"caption {cap!r} but the first frames move by {d[0].tolist()} (dy, dx)"
        full = ink[0] > 0.999
        colour = clip[0][:, full].mean(1)
        assert torch.allclose(colour, torch.tensor(RGB[m["colour"]], dtype=torch.float32) * 2 - 1, atol=1e-5), f"{cap!r}: colour {colour}"
        assert cap == f"a {m['colour']} {m['shape']} moving {m['direction']}"
        flips += int(((d[1:] * d[:-1]) < -1e-3).any())
    assert flips > 0, "in 40-frame clips some shape should bounce off a wall"


# ----------------------------------------------------------------------------- MNIST IDX reader

def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips(tmp_path, gz):
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 256, (3, 4, 5)).astype(np.uint8), 0x08),
             (rng.integers(-1000, 1000, (7,)).astype(np.int32), 0x0C),
             (rng.standard_normal((2, 3)).astype(np.float32), 0x0D)]
    for j, (arr, code) in enumerate(cases):
        raw = _idx_bytes(arr, code)
        path = tmp_path / f"a{j}.idx"
        path.write_bytes(gzip.compress(raw) if gz else raw)
        out = read_idx(path)
        assert out.shape == arr.shape and np.array_equal(out.numpy(), arr), f"IDX round trip failed for {arr.dtype}"


@pytest.mark.parametrize("corrupt, match", [
    (lambda raw: b"\x01" + raw[1:], "magic"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "type code"),
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: raw + b"\x00\x00", "truncated or corrupted"),
    (lambda raw: raw[:2], "too short"),
    (lambda raw: gzip.compress(raw)[:-12], "gzipped"),
])
def test_read_idx_rejects_corrupted_files(tmp_path, corrupt, match):
    raw = _idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08)
    path = tmp_path / "bad.idx"
    path.write_bytes(corrupt(raw))
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_load_mnist_from_a_local_folder(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 0x08))
    x, y = load_mnist(tmp_path, "train")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[:, 0], torch.from_numpy(images).float() / 127.5 - 1)
    assert y.tolist() == [3, 1, 4, 1, 5] and y.dtype == torch.long
    raw, _ = load_mnist(tmp_path, "train", normalize=False)
    assert raw.dtype == torch.uint8
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*never downloads"):
        load_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="does not exist.*never downloads"):
        load_mnist(tmp_path / "nowhere", "train")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels[:4], 0x08))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist(tmp_path, "test")
