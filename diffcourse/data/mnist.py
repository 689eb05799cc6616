"""A reader for MNIST's IDX files in a local folder; it never downloads anything (book §3).

The course itself trains on the bundled digits (:mod:`diffcourse.data.digits`); MNIST is optional. To use it,
put the four standard files (gzipped or not) into a folder of your choice:

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

IDX format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian uint32,
then the data, big-endian, row-major.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_idx", "load_mnist", "MNIST_FILES", "IDX_TYPES"]

IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file, plain or gzip (recognised by its content, not its name) (book §3).

    Checks the magic number, the type code and that the data size matches the header exactly,
    raising ``ValueError`` that names the file otherwise. Returns a tensor of the stored shape
    (uint8 data stay uint8; other types become their native-endian torch dtype).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: looks gzipped but cannot be decompressed ({err}); "
                             "the file is probably truncated or corrupted") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: only {len(raw)} bytes, too short for an IDX header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: bad magic number {raw[:4].hex()}; an IDX file starts with two zero "
                         "bytes (e.g. 00000803 for MNIST images) - is this really an IDX file?")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}; expected one of "
                         f"{[hex(c) for c in IDX_TYPES]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: header says {ndim} dimensions ({header} header bytes) "
                         f"but the file has only {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {dims} of {dtype} ({expected} data bytes) but the "
                         f"file has {len(raw) - header} data bytes - truncated or corrupted?")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))


def _find(folder: Path, stem: str) -> Path:
    """The file for ``stem`` in ``folder``: plain, .gz, or the variant with a dot before 'idx'."""
    variants = [stem, stem.replace("-idx", ".idx")]
    for name in variants:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folder}. This course never downloads data: copy the "
        f"four MNIST files ({', '.join(s for pair in MNIST_FILES.values() for s in pair)}, gzipped or "
        f"not) into {folder} yourself.")


def load_mnist(folder: str | Path, split: str = "train", normalize: bool = True):
    """MNIST from a local folder: images (N, 1, 28, 28) and labels (N,) long (book §3).

    ``split``: ``"train"`` (60 000) or ``"test"`` (10 000). With ``normalize`` the images are
    float32 in [-1, 1] (x / 127.5 - 1), otherwise the raw uint8. Raises ``FileNotFoundError``
    with instructions when the folder or a file is missing; never downloads.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(MNIST_FILES)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {folder} does not exist. This course never downloads data: create it and "
            f"copy the MNIST files ({', '.join(MNIST_FILES[split])}, .gz or not) into it.")
    img_stem, lab_stem = MNIST_FILES[split]
    images, labels = read_idx(_find(folder, img_stem)), read_idx(_find(folder, lab_stem))
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"expected images of shape (N, H, W) and labels of shape (N,) in {folder}, "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels for split {split!r}")
    labels = labels.to(torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{folder}: labels must be digits 0-9, found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    x = images.unsqueeze(1)                                                   # (N, 1, H, W)
    if normalize:
        x = x.to(torch.float32) / 127.5 - 1.0
    return x, labels
